"""Reporting: indexes for statistics and transparency reports scoped to one authority or one provider over a
period (``WHERE issuer_id = ? AND received_at BETWEEN ...``), so they stay fast on millions of referrals.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the per-party, per-period indexes."""
    op.create_index("ix_referrals_issuer_id_received_at", "referrals", ["issuer_id", "received_at"])
    op.create_index("ix_referrals_addressee_id_received_at", "referrals", ["addressee_id", "received_at"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_referrals_addressee_id_received_at", table_name="referrals")
    op.drop_index("ix_referrals_issuer_id_received_at", table_name="referrals")
