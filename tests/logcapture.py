"""What the service writes to its log while a block runs, as production writes it: every
logger's records at INFO through the project's redaction filter and JSON formatter.

The test client's own loggers (httpx, httpcore) are left out: they log the URLs the test
sends, which are the client's, not the service's.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from carebridge.logs import JsonFormatter, RedactingFilter

_CLIENT_LOGGERS = ("httpx", "httpcore")


class _ServiceOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_CLIENT_LOGGERS)


@contextmanager
def captured_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ServiceOnly())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
