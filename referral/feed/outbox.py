"""Writing events: ``emit()`` queues them in the session; they are written just before its COMMIT.

Writing at commit time, all at once, does two things. The per-recipient cursor rows are locked for the
shortest possible time (the COMMIT round trip), and always in the same (sorted) order, so writers never
deadlock on them. And every use case can emit from wherever it is, while only committed events are ever
seen or delivered: a rolled-back transaction takes its events with it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, event, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from referral.core.ids import new_id
from referral.feed.models import EventCursor, OutboxEvent
from referral.feed.notifier import CHANNEL, Notifier

_events = cast(Table, OutboxEvent.__table__)
_cursors = cast(Table, EventCursor.__table__)

PENDING_KEY = "referral.feed.pending"
"""``Session.info`` key: events emitted in the current transaction, not yet written."""
WAKE_KEY = "referral.feed.wake"
"""``Session.info`` key: parties with events in the transaction being committed."""
NOTIFIER_KEY = "referral.feed.notifier"
"""``Session.info`` key (set by the app's session maker): the process's :class:`Notifier`."""


class EventType(enum.StrEnum):
    """What happened; the ``type`` of feed events and webhook bodies."""

    REFERRAL_SUBMITTED = "referral.submitted"
    REFERRAL_WITHDRAWN = "referral.withdrawn"
    STATUS_RECORDED = "status.recorded"
    REFERRAL_OVERDUE = "referral.overdue"
    PRESERVATION_EXPIRING = "preservation.expiring"
    PRESERVATION_EXPIRED = "preservation.expired"
    REFERRAL_RELATED = "referral.related"


@dataclass(frozen=True)
class Event:
    """One event for one party."""

    recipient_id: str
    type: EventType
    created_at: datetime
    data: dict[str, Any]
    referral_id: str | None = None


def emit(session: AsyncSession | Session, events: Iterable[Event]) -> None:
    """Queue events in the caller's transaction; they are written (and only then seen) when it commits."""
    session.info.setdefault(PENDING_KEY, []).extend(events)


def _advance_cursor(session: Session, party_id: str, count: int) -> int:
    """Reserve ``count`` cursors for a party; returns the last one. Locks the party's cursor row."""
    dialect = session.get_bind().dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_cursors)
    statement = upsert.values(party_id=party_id, last_cursor=count).on_conflict_do_update(
        index_elements=[_cursors.c.party_id],
        set_={"last_cursor": _cursors.c.last_cursor + count},
    )
    return int(session.execute(statement.returning(_cursors.c.last_cursor)).scalar_one())


_NOTIFY = text("SELECT pg_notify(:channel, party_id) FROM unnest(:party_ids) AS party_id").bindparams(
    bindparam("party_ids", type_=postgresql.ARRAY(postgresql.TEXT))
)


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    # Runs inside the async session's greenlet, so the synchronous Session API does real (async) I/O here.
    pending: list[Event] | None = session.info.pop(PENDING_KEY, None)
    if not pending:
        return
    by_recipient: dict[str, list[Event]] = {}
    for queued in pending:
        by_recipient.setdefault(queued.recipient_id, []).append(queued)
    rows: list[dict[str, Any]] = []
    for party_id in sorted(by_recipient):
        events = by_recipient[party_id]
        first = _advance_cursor(session, party_id, len(events)) - len(events) + 1
        rows.extend(
            {
                "id": new_id(),
                "recipient_id": party_id,
                "cursor": first + offset,
                "type": queued.type.value,
                "referral_id": queued.referral_id,
                "created_at": queued.created_at,
                "data": queued.data,
            }
            for offset, queued in enumerate(events)
        )
    session.execute(insert(_events), rows)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NOTIFY, {"channel": CHANNEL, "party_ids": sorted(by_recipient)})
    session.info.setdefault(WAKE_KEY, set()).update(by_recipient)


@event.listens_for(Session, "after_commit")
def _wake_waiting(session: Session) -> None:
    parties: set[str] | None = session.info.pop(WAKE_KEY, None)
    notifier: Notifier | None = session.info.get(NOTIFIER_KEY)
    if parties and notifier is not None:
        notifier.wake(parties)


@event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)
    session.info.pop(WAKE_KEY, None)
