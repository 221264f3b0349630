"""Audit log: entries, the sequencing queue, leaves, subtree nodes and signed checkpoints.

The log is append-only at the database level: triggers refuse UPDATE and DELETE (and TRUNCATE on
PostgreSQL) on entries, leaves, nodes and checkpoints, so that not even a bug in this service can rewrite
history; `referral audit fsck` catches whatever gets past them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from referral.core.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLES = ("audit_entries", "audit_leaves", "audit_nodes", "audit_checkpoints")


def upgrade() -> None:
    """Create the audit tables and make the log append-only."""
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor_party", sa.String(36), nullable=True),
        sa.Column("actor_client", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("visible_to", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    op.create_index("ix_audit_entries_subject", "audit_entries", ["subject_type", "subject_id"])
    op.create_table(
        "audit_pending",
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["audit_entries.id"],
            name=op.f("fk_audit_pending_entry_id_audit_entries"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_audit_pending")),
    )
    op.create_table(
        "audit_leaves",
        sa.Column("leaf_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["audit_entries.id"], name=op.f("fk_audit_leaves_entry_id_audit_entries")
        ),
        sa.PrimaryKeyConstraint("leaf_index", name=op.f("pk_audit_leaves")),
        sa.UniqueConstraint("entry_id", name=op.f("uq_audit_leaves_entry_id")),
    )
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "index", name=op.f("pk_audit_nodes")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_audit_checkpoints")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION referral_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit log table % is append-only (% refused)', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """
        )
        for table in APPEND_ONLY_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION referral_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION referral_refuse_change()"
            )
    else:
        for table in APPEND_ONLY_TABLES:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'audit log table {table} is append-only "
                    f"({operation} refused)'); END"
                )


def downgrade() -> None:
    """Drop the audit tables (and with them their triggers)."""
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in ("audit_checkpoints", "audit_nodes", "audit_leaves", "audit_pending", "audit_entries"):
        op.drop_table(table)
    if postgres:
        op.execute("DROP FUNCTION referral_refuse_change()")
