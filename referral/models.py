"""Every table of the service, imported in one place so alembic and the tests see the whole schema."""

from referral.core.db import Base

metadata = Base.metadata

__all__ = ["metadata"]
