"""The real parts the suite needs: skipped with a reason locally, failed in CI.

A developer without PostgreSQL (or, later, Chromium, the node peers, the Twilio mock) can
still run the rest; CI (``CI=true``) must run everything, so there a missing part fails.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(part: str, available: bool, why: str) -> None:
    """Skip locally when a real part is missing; fail in CI, where it must be there."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{part} is required in CI and is missing: {why}", pytrace=False)
    pytest.skip(f"{part} unavailable: {why}")
