"""Every table of the service, imported in one place so alembic and the tests see the whole schema."""

from referral.audit import models as audit_models
from referral.core import idempotency as idempotency_models
from referral.core.db import Base
from referral.feed import models as feed_models
from referral.parties import models as party_models
from referral.referrals import models as referral_models
from referral.webhooks import models as webhook_models

metadata = Base.metadata

__all__ = [
    "audit_models",
    "feed_models",
    "idempotency_models",
    "metadata",
    "party_models",
    "referral_models",
    "webhook_models",
]
