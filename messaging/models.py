"""Care teams, threads, messages and attachments (registered by carebridge.models)."""

from __future__ import annotations
