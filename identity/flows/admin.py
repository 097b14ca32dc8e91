"""The roster's admin API: what ``carebridge roster`` does, for an operator's backend.

Callers are OAuth clients, not people: every request needs an access token with scope
``admin.roster`` obtained with the client-credentials grant (``sub == client_id``). A
token bound to a person is refused whatever its scopes: a patient (or staff member)
signed in to some app must never reach the roster through it. The audit log names the
caller ``client:<client_id>``.

The operations are the CLI's, through the same code (identity/roster/importer.py and
identity/roster/staff.py, identity/flows/activate.py and verify.py for the unlocks):

- ``POST /api/v1/admin/roster/sources/{source}/imports``: a CSV body (``text/csv``),
  all or nothing unless ``skip_invalid=true``; bad rows are reported by line, field and
  reason, never by value.
- ``GET /api/v1/admin/roster/sources/{source}``: counts.
- ``POST .../patients/{patient_id}/activation-codes``: a new code, in this answer only.
- ``GET .../patients/{patient_id}/activation-codes``: the patient's codes and their state
  (usable, used, expired, voided after wrong dates of birth), never a code.
- ``POST .../patients/{patient_id}/unlink`` and ``.../reverify``.
- ``POST .../accounts/{account_id}/activation-unlock`` and ``.../verify-unlock``.
- ``POST /api/v1/admin/accounts/{account_id}/erasure``: an erasure request made to the
  organization, which deletes the account as its owner could
  (identity/flows/delete_account.py). A separate scope, ``admin.accounts``: a roster
  back end cannot delete accounts.
- ``POST /api/v1/admin/accounts/{account_id}/recovery``: staff-assisted recovery of a lost
  second factor (identity/recovery.py). Its own scope, ``admin.recovery``. The one-time
  code goes to the account's verified address only: never in the answer.

Staff operations take a stated reason (an explanation, never personal data), kept on a
``staff_action`` row beside the audit event, as from the CLI. The patient look-up, which
would send decrypted roster details over the network, stays CLI-only.
"""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from carebridge import audit
from carebridge.audit import Outcome
from carebridge.db import transaction
from carebridge.http import bearer, openapi
from carebridge.http.body import bounded_chunks
from carebridge.http.forms import read_json
from carebridge.http.problems import Problem
from carebridge.runtime import Runtime
from identity import recovery
from identity.flows import activate, delete_account, verify
from identity.interfaces import Outward
from identity.models import Account
from identity.oidc import holders
from identity.roster import importer, staff
from identity.roster.csv_format import RowError

SCOPE = "admin.roster"
ACCOUNTS_SCOPE = "admin.accounts"
RECOVERY_SCOPE = "admin.recovery"
PREFIX = "/api/v1/admin/roster"
# Row errors listed in one answer; the counts say how many there were in all.
MAX_LISTED_ERRORS = 1000
# An upload stays in memory up to this size, then spills to a private temporary file.
_SPOOL_BYTES = 8 * 1024 * 1024
_ACCOUNT_ID = re.compile(r"acc_[A-Za-z0-9_-]{1,36}")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")

CLIENT_ONLY = (
    "This API needs a client-credentials token: a token issued for a person is not accepted."
)


# Models


@openapi.component
class StaffReason(BaseModel):
    """Why the operation is done: kept with the record. An explanation, never personal data."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        description="For example: patient called the help desk, identity checked by phone",
        json_schema_extra={"maxLength": staff.MAX_REASON},
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise PydanticCustomError("reason", "Say why (an explanation, never personal data).")
        if len(value) > staff.MAX_REASON:
            raise PydanticCustomError("reason", f"At most {staff.MAX_REASON} characters.")
        return value


@openapi.component
class RowProblem(BaseModel):
    """A bad row of an upload: where and why, never the value."""

    line: int
    field: str
    message: str


@openapi.component
class RosterImportReport(BaseModel):
    """A committed import: counts, and the rows left out under ``skip_invalid``."""

    import_id: str
    source: str
    mode: Literal["full", "partial"]
    rows: int
    imported: int = Field(description="New members")
    updated: int
    rejected: int = Field(description="Invalid rows (left out: skip_invalid)")
    ineligible: int = Field(description="Members made ineligible (terminated, or absent)")
    errors: list[RowProblem]
    errors_truncated: bool = Field(description=f"More than {MAX_LISTED_ERRORS} row errors")


@openapi.component
class LastImport(BaseModel):
    import_id: str
    started_at: datetime
    mode: str
    outcome: str
    rows: int
    imported: int
    updated: int
    rejected: int
    ineligible: int


@openapi.component
class RosterSourceStats(BaseModel):
    """Counts for one roster source; no personal data."""

    source: str
    members: int
    eligible: int
    ineligible: int
    terminated: int
    linked: int = Field(description="Members linked to an account")
    last_import: LastImport | None


@openapi.component
class IssuedActivationCode(BaseModel):
    """A one-time activation code. It is shown in this answer only (stored hashed)."""

    patient_id: str
    code: str = Field(examples=["ABCD-EFGH-JKMN"])
    expires_at: datetime


@openapi.component
class ActivationCodeState(BaseModel):
    """An activation code as staff see it (the code itself is stored only as a hash)."""

    id: str
    state: Literal["usable", "used", "expired", "voided"] = Field(
        description="voided: too many wrong dates of birth (any accounts); issue a new code"
    )
    failures: int = Field(description="Wrong dates of birth while it was usable")
    created_at: datetime
    created_by: str
    expires_at: datetime
    used_at: datetime | None
    voided_at: datetime | None


@openapi.component
class ActivationCodeList(BaseModel):
    patient_id: str
    codes: list[ActivationCodeState] = Field(description="Newest first")


@openapi.component
class Unlinked(BaseModel):
    patient_id: str
    account_id: str = Field(description="The account that was linked (it keeps its sign-in)")
    must_verify_again: bool


@openapi.component
class Unlocked(BaseModel):
    account_id: str
    failures_forgotten: int


class ImportOptions(BaseModel):
    """The import's query parameters (described from here; read by ``_flag``)."""

    skip_invalid: bool = Field(
        default=False, description="Import the valid rows and report the others"
    )
    partial: bool = Field(
        default=False, description="Leave the source's members absent from the file as they are"
    )
    columns: str | None = Field(
        default=None, description="Header names other than the field names: FIELD=HEADER,..."
    )


# Guards


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def require_operator(
    request: Request, scope: str = SCOPE, action: str = "roster.admin"
) -> str:
    """The calling client as the audit log names it, or a 401/403 problem: 401 too for a
    token withdrawn since it was issued (revoked, or its client disabled)."""
    access = bearer.require(request, scope)
    actor = f"client:{access.client_id}"
    runtime = _runtime(request)

    def refused() -> Problem | None:
        problem = None
        if not access.is_client_only:
            problem = Problem(403, CLIENT_ONLY)
        else:
            with runtime.sessions() as db:
                if not holders.in_standing(db, access):
                    problem = bearer.invalid_token("The access token is no longer valid.")
        if problem is not None:
            with transaction(runtime.sessions) as db:
                audit.append(
                    db,
                    actor=actor,
                    action=action,
                    outcome=Outcome.DENIED,
                    request_id=_request_id(request),
                )
        return problem

    problem = await run_in_threadpool(refused)
    if problem is not None:
        raise problem
    return actor


def _source(request: Request) -> str:
    source = str(request.path_params["source"])
    try:
        return importer.check_source(source)
    except importer.SourceError as exc:
        raise Problem(404, f"No such roster source: {exc}.") from None


def _patient_id(request: Request) -> str:
    patient_id = str(request.path_params["patient_id"])
    try:
        return staff.check_patient_id(patient_id)
    except staff.StaffError:
        raise Problem(404, "No roster member has this patient ID.") from None


async def _account_id(request: Request) -> str:
    account_id = str(request.path_params["account_id"])
    runtime = _runtime(request)

    def exists() -> bool:
        with runtime.sessions() as db:
            return db.get(Account, account_id) is not None

    if not _ACCOUNT_ID.fullmatch(account_id) or not await run_in_threadpool(exists):
        raise Problem(404, "No account has this ID.")
    return account_id


def _staff_problem(exc: staff.StaffError) -> Problem:
    if isinstance(exc, staff.NotFoundError):
        return Problem(404, f"{str(exc).capitalize()}.")
    if isinstance(exc, staff.ConflictError):
        return Problem(409, f"{str(exc).capitalize()}.")
    return Problem(400, f"{str(exc).capitalize()}.")


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise Problem(
        400,
        "The request is not valid.",
        errors=[{"field": name, "message": "Use true or false."}],
    )


def _no_store(body: BaseModel, status_code: int = 200) -> JSONResponse:
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status_code, headers={"Cache-Control": "no-store"}
    )


# Import


async def _spool_upload(request: Request, limit: int) -> IO[bytes]:
    """The body in a spooled temporary file (memory first), bounded by ``limit`` bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "text/csv":
        raise Problem(415, "Send the roster as text/csv.")
    too_large = Problem(413, f"The roster upload is over {limit // (1024 * 1024)} MiB.")
    arriving = bounded_chunks(request, limit, too_large)
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
    try:
        async for chunk in arriving:
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _row_problems(errors: list[RowError]) -> list[dict[str, object]]:
    return [{"line": e.line, "field": e.field, "message": e.reason} for e in errors]


@openapi.operation(
    answers={200: openapi.Json(RosterImportReport, "Imported")},
    security=openapi.access_token("admin.roster"),
    body=openapi.Binary(("text/csv",), "The file"),
    query=ImportOptions,
    path={"source": "The organization's roster name (1-64 letters, digits, . _ -)"},
    problems=(404, 422),
    tags=("admin",),
)
async def import_roster(request: Request) -> Response:
    """Import an eligibility roster (CSV)

    The same importer as `carebridge roster import`: every row is validated, and the
    import is all or nothing unless `skip_invalid=true`. Bad rows are reported by line
    number, field and reason, never by value. A full import (the default) makes the
    source's members missing from the file ineligible; `partial=true` updates only the
    rows sent. Needs a client-credentials token with scope `admin.roster`. Like the
    CLI's, the import has the CLI's database budget (CAREBRIDGE_DB_TIMEOUT_CLI_SECONDS),
    not a web request's: a large roster keeps the request open as long (a million
    members, about 95 s), and a client that gives up first does not stop it.

    - 400: A query parameter is not valid
    - 401: No valid access token
    - 403: The token lacks admin.roster, or is bound to a person
    - 404: Not a usable source name
    - 413: Over CAREBRIDGE_ROSTER_UPLOAD_MAX_MIB
    - 415: Not text/csv
    - 422: Nothing was imported: invalid rows (`errors`: line, field, message) without
      `skip_invalid`, or a file that is not a roster (encoding, header, CSV syntax)
    """
    actor = await require_operator(request)
    source = _source(request)
    skip_invalid, partial = _flag(request, "skip_invalid"), _flag(request, "partial")
    columns = request.query_params.get("columns") or None
    runtime = _runtime(request)
    upload = await _spool_upload(request, runtime.settings.roster_upload_max_mib * 1024 * 1024)
    errors: list[RowError] = []

    def collect(error: RowError) -> None:
        if len(errors) <= MAX_LISTED_ERRORS:
            errors.append(error)

    def run() -> importer.ImportResult:
        with upload:
            return importer.import_roster(
                runtime,
                upload,
                source=source,
                partial=partial,
                skip_invalid=skip_invalid,
                columns=columns,
                on_error=collect,
                actor=actor,
                name="upload",
                followers=request.app.state.outward.followers,
            )

    try:
        result = await run_in_threadpool(run)
    except importer.ImportRefusedError as exc:
        refused = exc.result
        detail = str(exc)
        if refused.rejected:
            noun = "row" if refused.rejected == 1 else "rows"
            detail = (
                f"{refused.rejected} invalid {noun}; nothing was imported (correct them, "
                "or send skip_invalid=true)"
            )
        raise Problem(
            422,
            detail,
            import_id=refused.import_id,
            rows=refused.rows,
            rejected=refused.rejected,
            errors=_row_problems(errors[:MAX_LISTED_ERRORS]),
            errors_truncated=len(errors) > MAX_LISTED_ERRORS,
        ) from None
    # What follows the roster (care teams fed by this source) follows it now.
    outward: Outward = request.app.state.outward
    if outward.roster_imported is not None:
        await run_in_threadpool(outward.roster_imported.roster_imported, source=source)
    report = RosterImportReport(
        import_id=result.import_id,
        source=result.source,
        mode="partial" if partial else "full",
        rows=result.rows,
        imported=result.imported,
        updated=result.updated,
        rejected=result.rejected,
        ineligible=result.ineligible,
        errors=[RowProblem.model_validate(e) for e in _row_problems(errors[:MAX_LISTED_ERRORS])],
        errors_truncated=len(errors) > MAX_LISTED_ERRORS,
    )
    return _no_store(report)


@openapi.operation(
    answers={200: openapi.Json(RosterSourceStats, "Counts, and the last import")},
    security=openapi.access_token("admin.roster"),
    problems=(404,),
    tags=("admin",),
)
async def source_stats(request: Request) -> Response:
    """Roster counts for a source (no personal data)

    - 401: No valid access token
    - 403: The token lacks admin.roster, or is bound to a person
    - 404: No roster has been imported for this source
    """
    await require_operator(request)
    source = _source(request)
    found = await run_in_threadpool(importer.stats, _runtime(request), source)
    if found is None:
        raise Problem(404, "No roster has been imported for this source.")
    last = found.last_import
    stats = RosterSourceStats(
        source=source,
        members=found.members,
        eligible=found.eligible,
        ineligible=found.members - found.eligible,
        terminated=found.terminated,
        linked=found.linked,
        last_import=None
        if last is None
        else LastImport(
            import_id=last.id,
            started_at=last.started_at,
            mode=last.mode,
            outcome=last.outcome,
            rows=last.rows,
            imported=last.imported,
            updated=last.updated,
            rejected=last.rejected,
            ineligible=last.ineligible,
        ),
    )
    return _no_store(stats)


# Staff operations


@openapi.operation(
    answers={201: openapi.Json(IssuedActivationCode, "Issued")},
    security=openapi.access_token("admin.roster"),
    body=StaffReason,
    problems=(404, 409),
    tags=("admin",),
)
async def issue_activation_code(request: Request) -> Response:
    """Issue a one-time activation code for an eligible, unlinked patient ID

    The code is in this answer only (the database keeps its hash). Earlier unused codes
    for the patient stop working. It expires after CAREBRIDGE_ACTIVATION_CODE_DAYS.

    - 409: The patient is ineligible or already linked to an account
    """
    actor = await require_operator(request)
    patient_id = _patient_id(request)
    body = await read_json(request, StaffReason)
    try:
        issued = await run_in_threadpool(
            lambda: staff.issue_code(_runtime(request), patient_id, reason=body.reason, actor=actor)
        )
    except staff.StaffError as exc:
        raise _staff_problem(exc) from None
    code = IssuedActivationCode(
        patient_id=patient_id, code=issued.code, expires_at=issued.expires_at
    )
    return _no_store(code, status_code=201)


@openapi.operation(
    answers={200: openapi.Json(ActivationCodeList, "The codes")},
    security=openapi.access_token("admin.roster"),
    problems=(404,),
    tags=("admin",),
)
async def list_activation_codes(request: Request) -> Response:
    """List a patient's activation codes (never the codes), voided ones included

    Newest first. A code presented with wrong dates of birth
    CAREBRIDGE_ACTIVATION_CODE_MAX_FAILURES times (from any accounts) is `voided`; issue
    a new one when the patient is who they say. Audited (`roster.activation_code.list`).

    - 401: No valid access token
    - 403: The token lacks admin.roster, or is bound to a person
    - 404: No such patient ID
    """
    actor = await require_operator(request)
    patient_id = _patient_id(request)
    runtime = _runtime(request)
    try:
        codes = await run_in_threadpool(
            lambda: staff.activation_codes(runtime, patient_id, actor=actor)
        )
    except staff.StaffError as exc:
        raise _staff_problem(exc) from None
    now = datetime.now(UTC)
    listed = [
        ActivationCodeState(
            id=code.id,
            state=code.state(now),
            failures=code.failures,
            created_at=code.created_at,
            created_by=code.created_by,
            expires_at=code.expires_at,
            used_at=code.used_at,
            voided_at=code.voided_at,
        )
        for code in codes
    ]
    return _no_store(ActivationCodeList(patient_id=patient_id, codes=listed))


async def _unlink(request: Request, action: str) -> Response:
    actor = await require_operator(request)
    patient_id = _patient_id(request)
    body = await read_json(request, StaffReason)
    try:
        account_id = await run_in_threadpool(
            lambda: staff.unlink(
                _runtime(request),
                patient_id,
                reason=body.reason,
                action=action,
                actor=actor,
                followers=request.app.state.outward.followers,
            )
        )
    except staff.StaffError as exc:
        raise _staff_problem(exc) from None
    return _no_store(
        Unlinked(
            patient_id=patient_id,
            account_id=account_id,
            must_verify_again=action == "roster.reverify",
        )
    )


@openapi.operation(
    answers={200: openapi.Json(Unlinked, "Unlinked")},
    security=openapi.access_token("admin.roster"),
    body=StaffReason,
    problems=(404, 409),
    tags=("admin",),
)
async def unlink(request: Request) -> Response:
    """Unlink a patient ID from its account (the account keeps its sign-in)

    - 409: The patient is not linked to an account
    """
    return await _unlink(request, "roster.unlink")


@openapi.operation(
    answers={200: openapi.Json(Unlinked, "Unlinked; the account must verify again")},
    security=openapi.access_token("admin.roster"),
    body=StaffReason,
    problems=(404, 409),
    tags=("admin",),
)
async def reverify(request: Request) -> Response:
    """Unlink a patient ID and end its unused activation codes

    The account must verify again (DOB and SSN last 4, or a new code).

    - 409: The patient is not linked to an account
    """
    return await _unlink(request, "roster.reverify")


async def _unlock(request: Request, kind: Literal["activation", "verification"]) -> Response:
    actor = await require_operator(request)
    account_id = await _account_id(request)
    body = await read_json(request, StaffReason)
    operation = activate.unlock if kind == "activation" else verify.unlock
    try:
        failures = await run_in_threadpool(
            lambda: operation(_runtime(request), account_id, reason=body.reason, actor=actor)
        )
    except staff.StaffError as exc:
        raise _staff_problem(exc) from None
    return _no_store(Unlocked(account_id=account_id, failures_forgotten=failures))


@openapi.operation(
    answers={200: openapi.Json(Unlocked, "Cleared")},
    security=openapi.access_token("admin.roster"),
    body=StaffReason,
    problems=(404,),
    tags=("admin",),
)
async def activation_unlock(request: Request) -> Response:
    """Clear an account's activation lock (5 wrong codes or dates of birth lock it)"""
    return await _unlock(request, "activation")


@openapi.operation(
    answers={200: openapi.Json(Unlocked, "Cleared")},
    security=openapi.access_token("admin.roster"),
    body=StaffReason,
    problems=(404,),
    tags=("admin",),
)
async def verify_unlock(request: Request) -> Response:
    """Clear an account's verification lock after staff review

    Five failed DOB + SSN last 4 attempts lock verification for the account.
    """
    return await _unlock(request, "verification")


@openapi.component
class Erased(BaseModel):
    account_id: str
    patient_id: str | None = Field(
        description="The patient ID it was linked to: it stays, with its messages"
    )
    notice_sent: bool = Field(description="A notice went to the verified address")


@openapi.operation(
    answers={200: openapi.Json(Erased, "Deleted")},
    security=openapi.access_token(ACCOUNTS_SCOPE),
    body=StaffReason,
    problems=(404,),
    tags=("admin",),
)
async def erase_account(request: Request) -> Response:
    """Delete an account for an erasure request made to the organization

    Deletes what the account's owner would delete themselves: sign-in methods, sessions,
    app grants and consents, contact points and notification preferences, the link to
    the patient ID. The messages stay with the care team; the audit log stays. Needs a
    client-credentials token with scope `admin.accounts`.

    - 404: No account has this ID
    """
    actor = await require_operator(request, ACCOUNTS_SCOPE, "identity.account.erasure")
    account_id = str(request.path_params["account_id"])
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise Problem(404, "No account has this ID.")
    body = await read_json(request, StaffReason)
    try:
        erased = await run_in_threadpool(
            lambda: delete_account.erase(
                _runtime(request),
                request.app.state.outward,
                account_id,
                reason=body.reason,
                actor=actor,
                request_id=_request_id(request),
            )
        )
    except staff.StaffError as exc:
        raise _staff_problem(exc) from None
    return _no_store(
        Erased(
            account_id=erased.account_id,
            patient_id=erased.patient_id,
            notice_sent=erased.notice_sent,
        )
    )


@openapi.component
class StaffRecovery(BaseModel):
    """What the operator checked, and why: kept on the recovery's record."""

    model_config = ConfigDict(extra="forbid")

    evidence: str = Field(
        description="The evidence checked, e.g. photo ID seen at the clinic desk; never its values",
        json_schema_extra={"maxLength": recovery.MAX_EVIDENCE},
    )
    reason: str = Field(
        description="Why, e.g. patient lost phone and recovery codes (ticket 1234)",
        json_schema_extra={"maxLength": staff.MAX_REASON},
    )


@openapi.component
class RecoveryStarted(BaseModel):
    """The code went to the account's verified address (and nowhere else)."""

    account_id: str
    recovery_id: str
    wait_hours: int = Field(description="The waiting period after the code is entered")


@openapi.operation(
    answers={202: openapi.Json(RecoveryStarted, "Started; the code was e-mailed")},
    security=openapi.access_token(RECOVERY_SCOPE),
    body=StaffRecovery,
    problems=(404, 409),
    tags=("admin",),
)
async def start_recovery(request: Request) -> Response:
    """Start a staff-assisted recovery of a lost second factor

    E-mails a one-time code to the account's verified address only; the answer never
    holds it. The person enters it after their password at the second step, then the
    same waiting period and notices as self-service recovery apply. Needs a
    client-credentials token with scope `admin.recovery`.

    - 400: Evidence or reason missing or too long
    - 404: No account has this ID
    - 409: No verified address, or a password reset or e-mail change in the last 7 days
    """
    actor = await require_operator(request, RECOVERY_SCOPE, "identity.recovery.staff_start")
    account_id = str(request.path_params["account_id"])
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise Problem(404, "No account has this ID.")
    body = await read_json(request, StaffRecovery)
    runtime = _runtime(request)
    try:
        recovery_id = await run_in_threadpool(
            lambda: recovery.start_staff(
                runtime,
                request.app.state.outward.email,
                account_id,
                evidence=body.evidence,
                reason=body.reason,
                operator=actor,
                request_id=_request_id(request),
            )
        )
    except staff.StaffError as exc:
        raise _staff_problem(exc) from None
    except recovery.RefusedError as exc:
        raise Problem(409, RECOVERY_REFUSED[exc.refusal]) from None
    return _no_store(
        RecoveryStarted(
            account_id=account_id,
            recovery_id=recovery_id,
            wait_hours=runtime.settings.recovery_wait_hours,
        ),
        status_code=202,
    )


RECOVERY_REFUSED = {
    recovery.Refusal.NO_ADDRESS: "The account has no verified e-mail address.",
    recovery.Refusal.NO_ROSTER: "The account is not linked to a patient record.",
    recovery.Refusal.RECENT_CHANGE: (
        "The account's password was reset or its e-mail address changed in the last 7 days."
    ),
}


def routes() -> list[BaseRoute]:
    return [
        Route(
            f"{PREFIX}/sources/{{source}}/imports",
            import_roster,
            methods=["POST"],
            name="admin_roster_import",
        ),
        Route(
            f"{PREFIX}/sources/{{source}}",
            source_stats,
            methods=["GET"],
            name="admin_roster_stats",
        ),
        Route(
            f"{PREFIX}/patients/{{patient_id}}/activation-codes",
            issue_activation_code,
            methods=["POST"],
            name="admin_roster_activation_code",
        ),
        Route(
            f"{PREFIX}/patients/{{patient_id}}/activation-codes",
            list_activation_codes,
            methods=["GET"],
            name="admin_roster_activation_codes",
        ),
        Route(
            f"{PREFIX}/patients/{{patient_id}}/unlink",
            unlink,
            methods=["POST"],
            name="admin_roster_unlink",
        ),
        Route(
            f"{PREFIX}/patients/{{patient_id}}/reverify",
            reverify,
            methods=["POST"],
            name="admin_roster_reverify",
        ),
        Route(
            f"{PREFIX}/accounts/{{account_id}}/activation-unlock",
            activation_unlock,
            methods=["POST"],
            name="admin_roster_activation_unlock",
        ),
        Route(
            f"{PREFIX}/accounts/{{account_id}}/verify-unlock",
            verify_unlock,
            methods=["POST"],
            name="admin_roster_verify_unlock",
        ),
        Route(
            "/api/v1/admin/accounts/{account_id}/erasure",
            erase_account,
            methods=["POST"],
            name="admin_account_erasure",
        ),
        Route(
            "/api/v1/admin/accounts/{account_id}/recovery",
            start_recovery,
            methods=["POST"],
            name="admin_account_recovery",
        ),
    ]
