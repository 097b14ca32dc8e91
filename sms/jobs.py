"""sms's part of `carebridge worker`: its outbox channel, and its own periodic jobs.

:class:`SmsChannel` is what the composition root registers with the outbox worker for
channel ``sms``: the ledger of notifications (drained by :mod:`sms.delivery`, batches
for up to five seconds every second, keeping pace with the sender's rate) and the
handler of the outbox's rows of that channel (one-time codes, :mod:`sms.codes`).
"""

from __future__ import annotations

from carebridge import outbox
from carebridge.runtime import Runtime
from carebridge.worker import Job
from sms import backends, codes, delivery, links
from sms.interfaces import Sender, TeamNames


class SmsChannel:
    """The ``sms`` channel of the outbox: one sender (one Twilio client, one connection
    pool) for notifications and codes alike."""

    channel = codes.CHANNEL
    name = "sms-notifications"

    def __init__(
        self, runtime: Runtime, sender: Sender | None = None, team_names: TeamNames | None = None
    ) -> None:
        self._runtime = runtime
        self._given = sender
        # Where a notice the patient allowed to name its care team asks the name
        # (messaging's, wired by the composition root); None: every notice is generic.
        self._team_names = team_names

    @property
    def _sender(self) -> Sender:
        # Built on first use: a misconfigured Twilio fails this channel's work (logged
        # by the worker each time), not the composition of every channel.
        if self._given is None:
            self._given = backends.for_settings(self._runtime.settings)
        return self._given

    def drain(self) -> int:
        return delivery.drain(self._runtime, self._sender, team_names=self._team_names)

    def deliver(self, message: outbox.Message) -> None:
        codes.deliver(self._runtime, self._sender, message)


JOBS: tuple[Job, ...] = (Job("sms-links-purge", 3600.0, links.purge),)
