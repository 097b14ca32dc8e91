"""Every table, so Alembic sees the whole schema. Each package's models register here."""

from __future__ import annotations

from carebridge import audit  # noqa: F401  (registers its tables on Base.metadata)
from carebridge.db import Base
from carebridge.events import models as events_models  # noqa: F401
from carebridge.outbox import models as outbox_models  # noqa: F401
from identity import models as identity_models  # noqa: F401
from identity.oidc import models as oidc_models  # noqa: F401
from messaging import models as messaging_models  # noqa: F401
from sms import models as sms_models  # noqa: F401

metadata = Base.metadata
