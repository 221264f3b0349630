"""Baseline: an empty schema under alembic's control.

Every later revision builds on this one, so a database created before any feature table existed can still be
upgraded in place.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to create yet: alembic's own version table is the whole schema."""


def downgrade() -> None:
    """Nothing to drop."""
