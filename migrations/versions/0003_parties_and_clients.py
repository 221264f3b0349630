"""Parties, their public signing keys, their API clients, and the used client-assertion ids.

Nobody may act without proving who they are (DESIGN.md §3): parties hold public JWKs only (private keys
never reach the server), API clients authenticate with private_key_jwt under their own key, and every
accepted assertion id is kept until it expires so that none is accepted twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from referral.core.db import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the party, key, client and used-assertion tables."""
    op.create_table(
        "parties",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("contact", sa.String(320), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('authority', 'provider', 'observer', 'operator')", name=op.f("ck_parties_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parties")),
    )
    op.create_table(
        "party_keys",
        sa.Column("party_id", sa.String(36), nullable=False),
        sa.Column("kid", sa.String(128), nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("jwk", sa.JSON(), nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revocation_reason", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_party_keys_party_id_parties"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("party_id", "kid", name=op.f("pk_party_keys")),
    )
    op.create_table(
        "api_clients",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("party_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("kid", sa.String(128), nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
        sa.Column("disabled_reason", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(
            ["party_id"], ["parties.id"], name=op.f("fk_api_clients_party_id_parties"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
    )
    op.create_index(op.f("ix_api_clients_party_id"), "api_clients", ["party_id"])
    op.create_table(
        "used_client_assertions",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(256), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_used_client_assertions_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_used_client_assertions")),
    )
    op.create_index("ix_used_client_assertions_expires_at", "used_client_assertions", ["expires_at"])


def downgrade() -> None:
    """Drop the tables, dependants first."""
    op.drop_index("ix_used_client_assertions_expires_at", table_name="used_client_assertions")
    op.drop_table("used_client_assertions")
    op.drop_index(op.f("ix_api_clients_party_id"), table_name="api_clients")
    op.drop_table("api_clients")
    op.drop_table("party_keys")
    op.drop_table("parties")
