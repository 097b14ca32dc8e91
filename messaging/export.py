"""A patient's export of every conversation: threads.json plus the attachments, zipped.

The right of access: the patient gets their own threads' content, decrypted. Staff account
IDs are left out, as on every patient-facing view.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.keyring import Keyring
from carebridge.runtime import Runtime
from messaging import crypto, files
from messaging.access import Actor, RefusedError
from messaging.models import Attachment, CareTeam, Message, Thread

FORMAT = "carebridge-messages-export/1"


@dataclass(frozen=True)
class Archive:
    filename: str
    content: bytes = field(repr=False)


def build(db: Session, keyring: Keyring, actor: Actor) -> Archive:
    if actor.kind != "patient":
        raise RefusedError(403, "Only a patient can export their conversations.")
    buffer = io.BytesIO()
    exported: list[dict[str, Any]] = []
    query = (
        select(Thread, CareTeam.name)
        .join(CareTeam, CareTeam.id == Thread.care_team_id)
        .where(Thread.patient_id == actor.id, Thread.data_key_wrapped.is_not(None))
        .order_by(Thread.created_at, Thread.id)
    )
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for thread, team_name in db.execute(query).all():
            cipher = crypto.cipher_for(keyring, thread)
            messages: list[dict[str, Any]] = []
            for message in db.scalars(
                select(Message).where(Message.thread_id == thread.id).order_by(Message.seq)
            ):
                attachments = []
                for attachment in db.scalars(
                    select(Attachment)
                    .where(Attachment.message_id == message.id)
                    .order_by(Attachment.created_at, Attachment.id)
                ):
                    name = cipher.open_text(
                        attachment.id, crypto.FILENAME, attachment.filename_encrypted
                    )
                    # The ID keeps paths unique; the cleaned name keeps them readable.
                    path = f"attachments/{thread.id}/{attachment.id}-{_path_safe(name)}"
                    content = cipher.open(
                        attachment.id, crypto.CONTENT, attachment.content_encrypted
                    )
                    archive.writestr(path, content)
                    attachments.append(
                        {
                            "id": attachment.id,
                            "filename": name,
                            "content_type": attachment.content_type,
                            "size": attachment.size,
                            "path": path,
                        }
                    )
                messages.append(
                    {
                        "id": message.id,
                        "seq": message.seq,
                        "from": "you" if message.author_kind == "patient" else "care team",
                        "body": cipher.open_text(message.id, crypto.BODY, message.body_encrypted),
                        "created_at": message.created_at.isoformat(),
                        "attachments": attachments,
                    }
                )
            exported.append(
                {
                    "id": thread.id,
                    "care_team": team_name,
                    "subject": cipher.open_text(
                        thread.id, crypto.SUBJECT, thread.subject_encrypted
                    ),
                    "status": thread.status,
                    "created_at": thread.created_at.isoformat(),
                    "messages": messages,
                }
            )
        document = {
            "format": FORMAT,
            "exported_at": datetime.now(UTC).isoformat(),
            "threads": exported,
        }
        archive.writestr("threads.json", json.dumps(document, indent=2, ensure_ascii=False))
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return Archive(f"carebridge-messages-{stamp}.zip", buffer.getvalue())


def for_operator(runtime: Runtime, patient_id: str, *, actor: str) -> Archive:
    """An export made by an operator for a patient's request, audited as theirs."""
    with transaction(runtime.sessions) as db:
        archive = build(db, runtime.keyring, Actor("patient", patient_id))
        audit.append(
            db,
            actor=actor,
            action="messaging.export",
            outcome=Outcome.ALLOWED,
            target=f"patient:{patient_id}",
        )
    return archive


def _path_safe(name: str) -> str:
    return files.ascii_name(name)


def response(archive: Archive) -> Response:
    return Response(
        archive.content,
        media_type="application/zip",
        headers={
            "Content-Disposition": files.content_disposition(archive.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
