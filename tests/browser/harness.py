"""What browser tests import: the live app's handle and the accessibility check."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.realparts import require

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING_IMPACTS = ("serious", "critical")
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


# Screenshots


@functools.cache
def _screenshot_dir() -> Path:
    # `make test` must leave the tree clean: the docs' pictures are retaken only on request
    # (`make screenshots`); otherwise the pages are still photographed, into a scratch folder.
    if os.environ.get("CAREBRIDGE_TEST_SCREENSHOTS") == "docs":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return Path(tempfile.mkdtemp(prefix="carebridge-screenshots-"))


def screenshot(page: Page, name: str) -> None:
    """Photograph the whole page as ``name``.png (docs/screenshots/ under `make screenshots`)."""
    page.screenshot(path=str(_screenshot_dir() / f"{name}.png"), full_page=True)


# Accessibility


def check_accessibility(page: Page) -> None:
    """Fail on axe-core violations of impact serious or critical, naming rules and targets.

    The pages' CSP forbids inline scripts (so no <script> tag can carry axe); page.evaluate
    runs through the DevTools protocol, which the CSP does not govern.
    """
    require("axe-core", AXE.is_file(), f"{AXE} is missing (npm ci --prefix tests/browser)")
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8") + "\n;true")
    results = page.evaluate(
        "() => axe.run(document, {resultTypes: ['violations']})"
        ".then(r => r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " targets: v.nodes.map(n => n.target.join(' '))})))"
    )
    blocking = [v for v in results if v["impact"] in BLOCKING_IMPACTS]
    if blocking:
        lines = [
            f"{v['impact']} {v['id']} ({v['help']}): {json.dumps(v['targets'])}" for v in blocking
        ]
        pytest.fail(f"accessibility violations on {page.url}:\n" + "\n".join(lines), pytrace=False)
