"""Schemathesis against the live API on PostgreSQL: every answer is one the served OpenAPI
document describes.

The real app runs under uvicorn on a loopback port, on a PostgreSQL database with a small
world (tests/messaging/conftest.py: a roster, patients with accounts, a care team and its
app). Each request carries valid credentials for its operation (a care team's access
token, an operator's client-credentials token, or a fresh session of a patient with a
second factor), so the generated data reaches the handlers; ``ignored_auth`` then checks
that the same request without them, or with invalid ones, is refused.

Deterministic: Hypothesis with a fixed seed and no example database, a bounded number of
examples per operation and mode, failures kept rather than shrunk: the same cases every
run (checked across hash seeds), so it cannot fail CI by chance. On this 2-core machine the
run takes 60-75 s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from messaging import care_teams
from tests import live_server
from tests.identity import factories
from tests.messaging.conftest import PROVIDER_APP, World, build_world
from tests.tokens import mint

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
MAX_EXAMPLES = 25
# A fixed seed, not derandomize: derandomize seeds by the test function's source, so a
# reformatted line would change every case.
SEED = 18
ADMIN_SCOPES = "admin.roster admin.webhooks admin.care_teams"


class Live:
    def __init__(self, url: str, world: World) -> None:
        self.url = url
        self.world = world
        self.patient = world.accounts["zeb"]
        factories.totp(world.runtime, self.patient)

    def known(self) -> dict[str, str]:
        """Path parameters that name things that exist: a thread (started here), a patient
        without an account yet, an account, the roster's source, a care team of its own
        (the admin API changes it at random: not the team the threads are with)."""
        response = httpx.post(
            f"{self.url}/api/v1/messaging/threads",
            json={"patient_id": self.world.patients["zeb"], "subject": "Hello", "body": "Hi"},
            headers=self.headers("/api/v1/messaging/threads"),
        )
        assert response.status_code == 201, response.text
        return {
            "thread_id": response.json()["thread"]["id"],
            "patient_id": self.world.patients["pip"],
            "account_id": self.world.accounts["otto"],
            "source": "acme",
            "team_id": care_teams.create(
                self.world.runtime, name="Fuzzed team", retention_days=30, actor="t"
            ),
        }

    def headers(self, path: str) -> dict[str, str]:
        """Valid credentials for the operation at ``path``."""
        runtime = self.world.runtime
        if path.startswith("/api/v1/messaging/"):
            token = mint(
                runtime,
                sub=PROVIDER_APP,
                client_id=PROVIDER_APP,
                scope="messaging.read messaging.write",
            )
        elif path.startswith("/api/v1/admin/"):
            token = mint(runtime, sub="ops", client_id="ops", scope=ADMIN_SCOPES)
        else:
            # A fresh session each time: the run signs out and ends sessions too.
            token = factories.session(runtime, self.patient, level=2)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def live(tmp_path: Path, postgres_database: str) -> Iterator[Live]:
    with live_server.live_app(tmp_path, postgres_database) as app:
        yield Live(app.url, build_world(app.runtime, tmp_path))


def _fuzz(
    live: Live,
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    failures: dict[str, str],
    answers: Counter[tuple[str, int]],
    *,
    path_parameters: dict[str, str] | None = None,
    examples: int = MAX_EXAMPLES,
) -> None:
    """Send ``operation`` its cases of ``mode``; keep the first failure and count answers."""
    label = f"{operation.label} ({mode.value}{', known IDs' if path_parameters else ''})"

    # A failure is kept, not raised: raising would make Hypothesis shrink it (more
    # requests, and a run whose length depends on what it found).
    @seed(SEED)
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(
        max_examples=examples,
        database=None,  # nothing remembered between runs: the same cases every run
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: schemathesis.Case) -> None:
        try:
            response = case.call_and_validate(headers=live.headers(case.path), checks=CHECKS)
        except (AssertionError, schemathesis.errors.FailureGroup) as exc:  # a failed check
            failures.setdefault(label, f"{exc}\n{case.as_curl_command()}")
        else:
            answers[operation.label, response.status_code] += 1

    run()


# 60-75 s of requests: more room than the suite's 120 s a test, on a loaded machine.
@pytest.mark.timeout(300)
def test_the_live_api_answers_as_its_document_says(live: Live) -> None:
    api = schemathesis.openapi.from_url(f"{live.url}/api/openapi.json")
    failures: dict[str, str] = {}
    answers: Counter[tuple[str, int]] = Counter()
    for found in api.get_all_operations():
        operation = found.ok()
        _fuzz(live, operation, GenerationMode.POSITIVE, failures, answers)
        # Negative data needs something to negate: a body or a query parameter (a path
        # parameter is any string, and every value is one).
        raw = operation.definition.raw
        if "requestBody" in raw or any(p["in"] != "path" for p in raw.get("parameters", [])):
            _fuzz(live, operation, GenerationMode.NEGATIVE, failures, answers)
    # Then the operations on one thing, with things that exist: past the 404, to the
    # handlers' own answers (and their response schemas).
    known = live.known()
    for found in api.get_all_operations():
        operation = found.ok()
        names = [
            p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"
        ]
        if names and set(names) <= set(known):
            parameters = {name: known[name] for name in names}
            _fuzz(
                live,
                operation,
                GenerationMode.POSITIVE,
                failures,
                answers,
                path_parameters=parameters,
                examples=10,
            )
    print("\n".join(f"{label} {status}: {n}" for (label, status), n in sorted(answers.items())))
    assert failures == {}, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
