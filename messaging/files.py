"""Attachment checks: the type comes from the bytes, the name is made safe to show and send.

A name or a Content-Type header is the uploader's claim; the first bytes are what a viewer
will actually parse. Only formats with a reliable signature are accepted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from urllib.parse import quote

# kind -> (signature, content type, extension)
_SIGNATURES: dict[str, tuple[bytes, str, str]] = {
    "pdf": (b"%PDF-", "application/pdf", ".pdf"),
    "png": (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    "jpeg": (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
}
_EXTENSIONS = {
    "application/pdf": (".pdf",),
    "image/png": (".png",),
    "image/jpeg": (".jpg", ".jpeg"),
}
MAX_FILENAME = 120
_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9._ -]")


def detect(content: bytes, allowed: Sequence[str]) -> str | None:
    """The content type ``content`` really is, if it is one of the ``allowed`` kinds."""
    for kind in allowed:
        signature, content_type, _ = _SIGNATURES[kind]
        if content.startswith(signature):
            return content_type
    return None


def allowed_names(allowed: Sequence[str]) -> str:
    return ", ".join(kind.upper() for kind in allowed)


def clean_filename(raw: str, content_type: str) -> str:
    """A display name: no directories, control or format characters, bounded, and ending
    with the detected type's extension (a "report.exe" that is a PDF becomes
    "report.exe.pdf")."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    name = name.strip(" .")
    extensions = _EXTENSIONS[content_type]
    if not name.lower().endswith(extensions):
        name = f"{name or 'attachment'}{extensions[0]}"
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[: MAX_FILENAME - len(ext) - 1]}{dot}{ext}"
    return name


def ascii_name(filename: str) -> str:
    """Letters, digits, dot, dash, underscore and space only (a header's or a zip's path)."""
    return _UNSAFE_ASCII.sub("_", filename) or "attachment"


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the exact name in RFC 6266 / 5987 form."""
    fallback = ascii_name(filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
