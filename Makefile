# The README's two commands: `make run` and `make test`. Each bootstraps .venv from the
# hash-pinned lock file, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint check screenshots lock messages clean

$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## The demo on http://127.0.0.1:8000 with the embedded SQLite default in ./var
run: $(STAMP)
	$(BIN)/carebridge serve --demo

# The npm test peers (oidc-provider, axe-core), pinned by their package-lock.json files.
# Without npm the tests that need them skip locally and fail under CI=true.
NODE_PEERS := tests/peers/node_modules/.package-lock.json tests/browser/node_modules/.package-lock.json

tests/%/node_modules/.package-lock.json: tests/%/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/$* --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: tests needing tests/$* will skip (fail under CI=true)"; fi

## The whole test suite, on SQLite and on PostgreSQL (CAREBRIDGE_TEST_POSTGRES_URL)
test: $(STAMP) $(NODE_PEERS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

## Retake docs/screenshots/ from the browser tests (`make test` photographs into a scratch folder)
screenshots: $(STAMP) $(NODE_PEERS)
	CAREBRIDGE_TEST_SCREENSHOTS=docs $(BIN)/python -m pytest tests/browser \
	  -k "sqlite and (test_the_whole_journey or test_sign_up_page_fits_a_phone)" $(PYTEST_ARGS)

## Re-resolve the pinned lock files after editing pyproject.toml
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra build --generate-hashes \
	  --python-version 3.11 --python-platform linux -q -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra build --extra dev --generate-hashes \
	  --python-version 3.11 --python-platform linux -q -o requirements-dev.lock

## Extract every _() string (Python and templates) into $(POT); update and compile catalogs
# A new language: pybabel init -i $(POT) -d $(LOCALES) -l <locale>, translate its .po, then
# `make messages`. File names without line numbers, so the committed .pot changes only
# when a string does (tests/carebridge/test_i18n.py checks that it is up to date).
LOCALES := carebridge/locales
POT     := $(LOCALES)/messages.pot
messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg --project=carebridge --add-location=file \
	  --add-comments=TRANSLATORS: -o $(POT) carebridge identity messaging sms
	@if ls $(LOCALES)/*/LC_MESSAGES/messages.po >/dev/null 2>&1; then \
	  $(BIN)/pybabel update -i $(POT) -d $(LOCALES) && \
	  $(BIN)/pybabel compile -d $(LOCALES); fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
