"""Every table of the service, imported in one place so alembic and the tests see the whole schema."""

from referral.audit import models as audit_models
from referral.core.db import Base

metadata = Base.metadata

__all__ = ["audit_models", "metadata"]
