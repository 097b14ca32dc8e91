"""The scopes this provider knows, and which a client may be given.

Fixed scopes are listed; SMART on FHIR resource scopes (``patient/Observation.rs``,
``patient/*.read``) are recognised by pattern and passed through to the access token.
"""

from __future__ import annotations

import re

from carebridge.i18n import N_

OPENID = "openid"
OFFLINE_ACCESS = "offline_access"
LAUNCH_PATIENT = "launch/patient"
FHIR_USER = "fhirUser"

# Scopes that need a person: never given to a client acting for itself.
USER_SCOPES = frozenset({OPENID, OFFLINE_ACCESS, "profile", "email", LAUNCH_PATIENT, FHIR_USER})
# Scopes of operator back ends: client credentials only, never on behalf of a patient.
CLIENT_ONLY_SCOPES = frozenset(
    {
        "admin.roster",
        "admin.accounts",
        "admin.recovery",
        "admin.webhooks",
        "admin.care_teams",
        "events.read",
    }
)
API_SCOPES = frozenset({"messaging.read", "messaging.write"})
FIXED = USER_SCOPES | CLIENT_ONLY_SCOPES | API_SCOPES

_SMART = re.compile(r"^patient/(\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*|c?r?u?d?s?)$")

DESCRIPTIONS = {
    OPENID: N_("Confirm that it is you (a pseudonymous identifier, not your name)"),
    OFFLINE_ACCESS: N_("Keep access while you are not using the app"),
    "profile": N_("See basic profile information (carebridge holds no names)"),
    "email": N_("See the email address you sign in with"),
    "messaging.read": N_("Read your secure messages"),
    "messaging.write": N_("Send secure messages for you"),
    LAUNCH_PATIENT: N_("Know which patient record you are"),
    FHIR_USER: N_("Know which patient record you are"),
}


def split(scope: str | None) -> list[str]:
    """Scopes in request order, duplicates dropped."""
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


def is_smart(scope: str) -> bool:
    return _SMART.match(scope) is not None and not scope.endswith(".")


def is_known(scope: str) -> bool:
    return scope in FIXED or is_smart(scope)


def _smart_permissions(scope: str) -> tuple[str, frozenset[str]]:
    match = _SMART.match(scope)
    assert match is not None  # noqa: S101  (callers check is_smart first)
    resource, perms = match.group(1), match.group(2)
    expanded = {"read": "rs", "write": "cud", "*": "cruds"}.get(perms, perms)
    return resource, frozenset(expanded)


def allows(allowed: frozenset[str], scope: str) -> bool:
    """Whether a client registered for ``allowed`` may ask for ``scope``: exactly, or a
    SMART scope covered by a registered one (``patient/*.rs`` covers ``patient/Observation.r``)."""
    if scope in allowed:
        return True
    if not is_smart(scope):
        return False
    resource, perms = _smart_permissions(scope)
    for registered in allowed:
        if is_smart(registered):
            their_resource, their_perms = _smart_permissions(registered)
            if their_resource in ("*", resource) and perms <= their_perms:
                return True
    return False


def describe(scope: str) -> str:
    if scope in DESCRIPTIONS:
        return DESCRIPTIONS[scope]
    if is_smart(scope):
        resource, perms = _smart_permissions(scope)
        what = "all your health records" if resource == "*" else f"your {resource} records"
        verbs = "see" if perms <= frozenset("rs") else "see and change"
        return f"{verbs.capitalize()} {what}"
    return scope
