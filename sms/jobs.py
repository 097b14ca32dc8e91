"""sms's background jobs, for `carebridge worker` to run.

The outbox job runs every second and drains what is due in batches for up to five
seconds, so delivery keeps pace with the sender's rate without a loop of its own.
"""

from __future__ import annotations

from carebridge.runtime import Runtime
from carebridge.worker import Job
from sms import backends, delivery, links
from sms.interfaces import Sender

_senders: dict[int, Sender] = {}


def _sender(runtime: Runtime) -> Sender:
    # One sender (one Twilio client, one connection pool) per runtime.
    key = id(runtime)
    if key not in _senders:
        _senders[key] = backends.for_settings(runtime.settings)
    return _senders[key]


def deliver(runtime: Runtime) -> None:
    delivery.drain(runtime, _sender(runtime))


JOBS: tuple[Job, ...] = (
    Job("sms-outbox", 1.0, deliver),
    Job("sms-links-purge", 3600.0, links.purge),
)
