"""The composition root's wiring: which package does what another one needs.

identity declares what it needs from outside (identity.interfaces: sending a one-time
code, sending an e-mail, forgetting a deleted account's data) and never imports sms;
the outbox knows channels only by name. Here both are given their implementations:
sms's code sender, sms's security-notice texter (a recovery's "this wasn't me" link
by SMS), the outbox e-mail sender, sms's forgetting of a deleted
account's contact point and preferences, and messaging's care teams' clients following a
patient (told of the account or roster link ending) for identity (:func:`identity_outward`, on
``app.state.outward``), and each channel's handler for the outbox worker
(:func:`outbox_channels`: sms, the e-mail backend the settings chose, webhooks,
back-channel logout tokens), and what the event feed and the webhook API ask identity
(:func:`event_hooks`), and the care team names sms's notices may carry
(:class:`MessagingTeamNames`, on ``app.state.team_names`` for the voice callbacks, and
given to the sms channel).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from sqlalchemy.orm import Session

from carebridge import mail, outbox
from carebridge.events.api import Hooks as EventHooks
from carebridge.events.delivery import WebhookHandler
from carebridge.runtime import Runtime
from carebridge.settings import EmailBackend
from identity.interfaces import Outward, client_exists, in_standing, roster_patient_ids
from identity.oidc.backchannel import LogoutTokenHandler
from messaging.interfaces import clients_following, sync_roster, team_name_of_thread
from sms import codes, contacts
from sms.interfaces import SecurityNoticeTexter
from sms.jobs import SmsChannel


class ForgetDeletedAccount:
    """identity's ``AccountDeleted``: what other packages keep per person goes with the
    account. sms: the contact point's number, the notification preferences, the SMS
    links (keyed by patient ID). messaging keeps nothing per account but care-team staff
    membership, which its foreign key's ``ON DELETE CASCADE`` removes; its threads and
    messages are the care record and stay."""

    def account_deleted(self, db: Session, *, account_id: str, patient_id: str | None) -> None:
        if patient_id is not None:
            contacts.forget_patient(db, patient_id)


class CareTeamsFollowRoster:
    """identity's ``RosterImported``: after an import of a source, the care teams fed by
    it (messaging) have its eligible members as patients; rows removed end theirs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def roster_imported(self, *, source: str) -> None:
        with self.runtime.sessions() as db:
            members = roster_patient_ids(db, source)
        sync_roster(self.runtime, source, members, actor=f"roster:{source}")


class MessagingTeamNames:
    """sms's ``TeamNames``: a thread's care team name, from messaging (sms may not import
    messaging), for the notices a patient's consent in force allows to name the team."""

    def team_name_of_thread(self, db: Session, thread_id: str) -> str | None:
        return team_name_of_thread(db, thread_id)


class CareTeamFollowers:
    """identity's ``PatientFollowers``: the care teams' clients that follow a patient
    (messaging's answer), told of the patient's account and roster link ending."""

    def clients_following(
        self, db: Session, patient_ids: Collection[str]
    ) -> Mapping[str, Sequence[str]]:
        return clients_following(db, patient_ids)


def identity_outward(runtime: Runtime) -> Outward:
    return Outward(
        one_time_codes=codes.OutboxCodeSender(runtime),
        email=mail.OutboxEmailSender(runtime),
        account_deleted=ForgetDeletedAccount(),
        security_texts=SecurityNoticeTexter(runtime),
        roster_imported=CareTeamsFollowRoster(runtime),
        followers=CareTeamFollowers(),
    )


def event_hooks() -> EventHooks:
    return EventHooks(in_standing=in_standing, client_exists=client_exists)


def outbox_channels(runtime: Runtime) -> outbox.Channels:
    sms = SmsChannel(runtime, team_names=MessagingTeamNames())
    handlers: dict[str, outbox.Handler] = {sms.channel: sms}
    # CAREBRIDGE_EMAIL_BACKEND: smtp sends through the relay; console prints to the
    # terminal (the development default; production refuses to start with it).
    email: outbox.Handler
    if runtime.settings.email_backend is EmailBackend.SMTP:
        email = mail.SmtpMailer(runtime.settings)
    else:
        email = mail.ConsoleMailer()
    handlers[email.channel] = email
    # Webhooks to provider apps (carebridge.events), signed per Standard Webhooks.
    webhook = WebhookHandler(runtime)
    handlers[webhook.channel] = webhook
    # OpenID Connect back-channel logout tokens (identity), through the same HTTP client.
    logout = LogoutTokenHandler(runtime)
    handlers[logout.channel] = logout
    return outbox.Channels(
        handlers=handlers,
        ledgers=(sms,),
        policy=outbox.RetryPolicy.for_settings(runtime.settings),
    )


OUTBOX = outbox.job(outbox_channels)
