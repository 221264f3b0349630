"""Audit tables. All are append-only; database triggers (migration 0002) refuse UPDATE and DELETE on the
log itself, and only the queue of not-yet-sequenced entries is ever deleted from."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, LargeBinary, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from referral.core.db import Base


class AuditEntry(Base):
    """One audited action; its canonical JSON is a leaf of the Merkle tree once sequenced."""

    __tablename__ = "audit_entries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime]
    actor_party: Mapped[str | None] = mapped_column(String(36))
    actor_client: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(128))
    digest: Mapped[str | None] = mapped_column(String(64))
    visible_to: Mapped[list[str]] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_entries_subject", "subject_type", "subject_id"),)


class AuditPending(Base):
    """Queue of committed entries the sequencer has not yet given a leaf index."""

    __tablename__ = "audit_pending"

    entry_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("audit_entries.id", ondelete="RESTRICT"), primary_key=True
    )


class AuditLeaf(Base):
    """The leaf index and leaf hash the sequencer gave an entry."""

    __tablename__ = "audit_leaves"

    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_id: Mapped[str] = mapped_column(String(36), ForeignKey("audit_entries.id"), unique=True)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditNode(Base):
    """Hash of a complete (perfect) subtree above the leaves: 2**level leaves starting at index * 2**level.

    Every proof is assembled from O(log n) of these instead of re-hashing the whole log.
    """

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    """A signed checkpoint (C2SP tlog-checkpoint in a signed note); every one is kept."""

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
