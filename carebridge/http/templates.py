"""Jinja2 templates (autoescaped) for the pages carebridge serves."""

from __future__ import annotations

from pathlib import Path

from starlette.templating import Jinja2Templates

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
