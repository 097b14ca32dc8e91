"""Opaque identifiers for rows of any package: one generator, so every ID reads alike."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A random, opaque identifier: 128 bits, URL-safe, with a recognisable prefix."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"
