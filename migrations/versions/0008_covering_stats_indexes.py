"""Reporting: the per-party, per-period indexes also carry the columns statistics read (PostgreSQL only), so
an authority's or a provider's figures over a year are an index-only scan instead of a read of every page of
the table (measured on 1 M referrals: the statistics of one of four authorities 1.8 s -> 0.6 s). They are
about 200 MB per million referrals each. SQLite has no ``INCLUDE``; its indexes stay as they are.

Rebuilding them locks writes to ``referrals`` for the time it takes (about 5 s per million referrals).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What ``referral.reporting.queries`` reads of a referral besides the key columns (kept in step with
# ``referral.referrals.models.STATS_COLUMNS``; a migration does not import the models it migrates).
READ = ["type", "category", "status", "acknowledged_at", "decided_at", "deadline", "preserved_until", "id"]
INDEXES = {
    "ix_referrals_issuer_id_received_at": (["issuer_id", "received_at"], ["addressee_id", *READ]),
    "ix_referrals_addressee_id_received_at": (["addressee_id", "received_at"], ["issuer_id", *READ]),
}


def upgrade() -> None:
    """Rebuild the per-party, per-period indexes with the columns statistics read."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (columns, included) in INDEXES.items():
        op.drop_index(name, table_name="referrals")
        op.create_index(name, "referrals", columns, postgresql_include=included)


def downgrade() -> None:
    """Rebuild them with their key columns only."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (columns, _included) in INDEXES.items():
        op.drop_index(name, table_name="referrals")
        op.create_index(name, "referrals", columns)
