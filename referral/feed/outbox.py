"""Writing events: ``emit()`` queues them in the session; they are written just before its COMMIT.

Writing at commit time, all at once, does two things. The per-recipient cursor rows are locked for the
shortest possible time (the COMMIT round trip), and always in the same (sorted) order, so writers never
deadlock on them. And every use case can emit from wherever it is, while only committed events are ever
seen or delivered: a rolled-back transaction takes its events with it.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, event, insert, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from referral.core.ids import new_id
from referral.feed.models import EventCursor, OutboxEvent
from referral.feed.notifier import CHANNEL, Notifier

_events = cast(Table, OutboxEvent.__table__)
_cursors = cast(Table, EventCursor.__table__)
_INSERT_EVENTS = insert(_events)

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


_UPSERT = (
    "INSERT INTO event_cursors (party_id, last_cursor) VALUES {rows} ON CONFLICT (party_id) "
    "DO UPDATE SET last_cursor = event_cursors.last_cursor + excluded.last_cursor "
    "RETURNING party_id, last_cursor"
)
# PostgreSQL: cursors, events and NOTIFY in one statement. Each event's cursor is its party's new last cursor
# minus how many of that party's events follow it in this transaction.
_UPSERT_INSERT_AND_NOTIFY = """
WITH advanced AS ({upsert}),
written AS (
    INSERT INTO outbox_events (id, recipient_id, cursor, type, referral_id, created_at, data)
    SELECT event.id, event.recipient_id, advanced.last_cursor - event.back, event.type, event.referral_id,
           event.created_at, event.data
    FROM unnest(CAST(:event_id AS varchar[]), CAST(:event_recipient AS varchar[]),
                CAST(:event_back AS bigint[]),
                CAST(:event_type AS varchar[]), CAST(:event_referral AS varchar[]),
                CAST(:event_created_at AS timestamptz[]), CAST(:event_data AS json[]))
         AS event(id, recipient_id, back, type, referral_id, created_at, data)
    JOIN advanced ON advanced.party_id = event.recipient_id
)
SELECT party_id, last_cursor, pg_notify(:channel, party_id) FROM advanced
"""


@functools.cache
def _advance_statement(dialect: str, parties: int) -> Any:
    """The cursor upsert for this many parties (on PostgreSQL with the events and the NOTIFY). Written as
    text: SQLAlchemy does not cache the compiled form of an ``ON CONFLICT`` upsert, and compiling it again on
    every commit costs more than running it."""
    # Only numbered placeholders are formatted in; every value is a bound parameter.
    upsert = _UPSERT.format(rows=", ".join(f"(:party_{n}, :count_{n})" for n in range(parties)))
    if dialect != "postgresql":
        return text(upsert)
    return text(_UPSERT_INSERT_AND_NOTIFY.format(upsert=upsert)).bindparams(channel=CHANNEL)


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    """Reserve the recipients' cursors and write the events: one statement on PostgreSQL, two on SQLite.

    The cursor rows are locked in sorted party order (rows of a multi-row INSERT are taken in order), so two
    writers never wait on each other in a cycle. On PostgreSQL the same statement sends the NOTIFY that wakes
    waiting feed readers in other processes (delivered by the server only if the transaction commits).
    """
    # Runs inside the async session's greenlet, so the synchronous Session API does real (async) I/O here.
    pending: list[Event] | None = session.info.pop(PENDING_KEY, None)
    if not pending:
        return
    by_recipient: dict[str, list[Event]] = {}
    for queued in pending:
        by_recipient.setdefault(queued.recipient_id, []).append(queued)
    dialect = session.get_bind().dialect.name
    parties = sorted(by_recipient)
    params: dict[str, Any] = {}
    for n, party_id in enumerate(parties):
        params[f"party_{n}"] = party_id
        params[f"count_{n}"] = len(by_recipient[party_id])
    rows: list[dict[str, Any]] = [
        {
            "id": new_id(),
            "recipient_id": party_id,
            "back": len(by_recipient[party_id]) - 1 - offset,
            "type": queued.type.value,
            "referral_id": queued.referral_id,
            "created_at": queued.created_at,
            "data": queued.data,
        }
        for party_id in parties
        for offset, queued in enumerate(by_recipient[party_id])
    ]
    statement = _advance_statement(dialect, len(parties))
    if dialect == "postgresql":
        # An event's data is often one dict shared by its recipients (both parties of a case, the signed
        # document inside): serialise each once.
        serialised: dict[int, str] = {}
        for row in rows:
            if id(row["data"]) not in serialised:
                serialised[id(row["data"])] = json.dumps(row["data"])
        params.update(
            event_id=[row["id"] for row in rows],
            event_recipient=[row["recipient_id"] for row in rows],
            event_back=[row["back"] for row in rows],
            event_type=[row["type"] for row in rows],
            event_referral=[row["referral_id"] for row in rows],
            event_created_at=[row["created_at"] for row in rows],
            event_data=[serialised[id(row["data"])] for row in rows],
        )
        session.execute(statement, params)
    else:
        last_cursors = {row[0]: int(row[1]) for row in session.execute(statement, params)}
        for row in rows:
            row["cursor"] = last_cursors[row["recipient_id"]] - row.pop("back")
        session.execute(_INSERT_EVENTS, rows)
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
