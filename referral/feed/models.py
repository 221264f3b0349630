"""The outbox: one row per event and recipient, numbered by a cursor per recipient party.

A recipient's cursor is advanced by an UPSERT on ``event_cursors`` in the transaction that writes the event,
so the row lock it takes orders concurrent writers: cursor order is commit order for every recipient, and a
reader that has seen cursor N never later finds a committed event below N.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from referral.core.db import Base


class OutboxEvent(Base):
    """One event for one party; its id is the ``webhook-id`` of every delivery of it."""

    __tablename__ = "outbox_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    recipient_id: Mapped[str] = mapped_column(String(36), ForeignKey("parties.id", ondelete="RESTRICT"))
    cursor: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    referral_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("recipient_id", "cursor", name="uq_outbox_events_recipient_id_cursor"),
        Index("ix_outbox_events_referral_id", "referral_id"),
    )


class EventCursor(Base):
    """The last cursor given to an event of this party."""

    __tablename__ = "event_cursors"

    party_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("parties.id", ondelete="RESTRICT"), primary_key=True
    )
    last_cursor: Mapped[int] = mapped_column(BigInteger)
