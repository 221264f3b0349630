"""Statistics: a partial index of the preservations ever extended (their ``preservation_extended`` history
rows), from which a statistics read takes that set once (a hashed subplan) instead of scanning the whole
status history, which grows with every status of every referral. Building it reads the history once and
locks writes to ``referral_statuses`` while it does (a second or two per million history rows); the index
itself holds only the extended preservations' rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXTENDED = sa.text("status = 'preservation_extended'")


def upgrade() -> None:
    """Create the partial index."""
    op.create_index(
        "ix_referral_statuses_extended",
        "referral_statuses",
        ["referral_id"],
        postgresql_where=EXTENDED,
        sqlite_where=EXTENDED,
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_referral_statuses_extended", table_name="referral_statuses")
