"""Referrals: documents as received (JWS verbatim), items for de-confliction, status history, links.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from referral.core.db import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the referral tables."""
    op.create_table(
        "referrals",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("issuer_id", sa.String(36), nullable=False),
        sa.Column("addressee_id", sa.String(36), nullable=False),
        sa.Column("jti", sa.String(128), nullable=False),
        sa.Column("kid", sa.String(128), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("jws_sha256", sa.String(64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("deadline", UTCDateTime(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("preserved_until", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("audit_entry_id", sa.String(36), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["addressee_id"],
            ["parties.id"],
            name=op.f("fk_referrals_addressee_id_parties"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["issuer_id"], ["parties.id"], name=op.f("fk_referrals_issuer_id_parties"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
        sa.UniqueConstraint("issuer_id", "jti", name="uq_referrals_issuer_id_jti"),
    )
    op.create_index("ix_referrals_issuer_id_id", "referrals", ["issuer_id", "id"])
    op.create_index("ix_referrals_addressee_id_id", "referrals", ["addressee_id", "id"])
    op.create_index("ix_referrals_status_deadline", "referrals", ["status", "deadline"])
    op.create_index("ix_referrals_received_at", "referrals", ["received_at"])
    op.create_table(
        "referral_items",
        sa.Column("referral_id", sa.String(36), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("addressee_id", sa.String(36), nullable=False),
        sa.Column("url", sa.String(2048), nullable=True),
        sa.Column("account", sa.String(256), nullable=True),
        sa.Column("content_sha256", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_items_referral_id_referrals"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("referral_id", "position", name=op.f("pk_referral_items")),
    )
    op.create_index("ix_referral_items_addressee_id_url", "referral_items", ["addressee_id", "url"])
    op.create_index(
        "ix_referral_items_addressee_id_content_sha256", "referral_items", ["addressee_id", "content_sha256"]
    )
    op.create_table(
        "referral_statuses",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("referral_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("previous_status", sa.String(32), nullable=False),
        sa.Column("actor_party_id", sa.String(36), nullable=True),
        sa.Column("jti", sa.String(128), nullable=True),
        sa.Column("jws", sa.Text(), nullable=True),
        sa.Column("jws_sha256", sa.String(64), nullable=True),
        sa.Column("document", sa.JSON(), nullable=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("audit_entry_id", sa.String(36), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_statuses_referral_id_referrals"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_statuses")),
        sa.UniqueConstraint("actor_party_id", "jti", name="uq_referral_statuses_actor_party_id_jti"),
    )
    op.create_index(
        "ix_referral_statuses_referral_id_recorded_at", "referral_statuses", ["referral_id", "recorded_at"]
    )
    op.create_table(
        "referral_links",
        sa.Column("referral_id", sa.String(36), nullable=False),
        sa.Column("related_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_links_referral_id_referrals"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["related_id"],
            ["referrals.id"],
            name=op.f("fk_referral_links_related_id_referrals"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("referral_id", "related_id", name=op.f("pk_referral_links")),
    )


def downgrade() -> None:
    """Drop the referral tables."""
    for table in ("referral_links", "referral_statuses", "referral_items", "referrals"):
        op.drop_table(table)
