"""Writing events: ``emit()`` queues them in the session; they are written just before its COMMIT (or by the
transaction's last statement, on PostgreSQL, when a use case takes them into it with ``take_pending``).

Writing at the end, all at once, does two things. The per-recipient cursor rows are locked for the shortest
possible time (the last statement and the COMMIT round trip), and always in the same (sorted) order, so
writers never deadlock on them. And every use case can emit from wherever it is, while only committed events
are ever seen or delivered: a rolled-back transaction takes its events with it.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, Text, bindparam, event, insert, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from referral.core.ids import new_id
from referral.feed.models import EventCursor, OutboxEvent
from referral.feed.notifier import CHANNEL, Notifier

_events = cast(Table, OutboxEvent.__table__)
_cursors = cast(Table, EventCursor.__table__)
# SQLite: the data is bound as the JSON text ``_data_texts`` made (the column's JSON type would serialise a
# body shared by two recipients once for each of them).
_INSERT_EVENTS = insert(_events).values(data=bindparam("data", type_=Text()))

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


def event_ctes(*, prefix: str, where: str | None = None) -> str:
    """PostgreSQL: the CTEs ``{prefix}advanced`` and ``{prefix}written`` that reserve the recipients'
    cursors, write the events and NOTIFY the recipients (delivered by the server only if the transaction
    commits), for statements that write events together with the change they tell of (parameters from
    ``event_parameters``). Each event's cursor is its party's new last cursor minus how many of that
    party's events follow it in the statement.

    The cursor rows are locked in one pass in party order (bytewise, as Python sorts), as every writer of
    events does, so two writers never wait on each other in a cycle. Use it only in a statement that is its
    own transaction, or the last of its transaction to take row locks: a transaction that held cursor rows
    while it waited for another row lock could deadlock with one that holds that row and takes cursor rows at
    its commit (a status update does). ``where`` (SQL, no values) writes the events only if it holds."""
    advanced = f"{prefix}advanced"
    # Names and the caller's SQL only are formatted in; every value is a bound parameter.
    return (
        f"{advanced} AS (INSERT INTO {_cursors.name} (party_id, last_cursor) "  # noqa: S608 - names only
        f"SELECT * FROM unnest(CAST(:{prefix}party AS varchar[]), CAST(:{prefix}count AS bigint[])) "
        f"AS wanted(party_id, count) {'' if where is None else 'WHERE ' + where} "
        'ORDER BY party_id COLLATE "C" '
        "ON CONFLICT (party_id) DO UPDATE SET last_cursor = event_cursors.last_cursor + excluded.last_cursor "
        f"RETURNING party_id, last_cursor, pg_notify(:{prefix}channel, party_id)), "
        f"{prefix}written AS (INSERT INTO {_events.name} "
        "(id, recipient_id, cursor, type, referral_id, created_at, data) "
        "SELECT event.id, event.recipient_id, advanced.last_cursor - event.back, event.type, "
        "event.referral_id, event.created_at, event.data "
        f"FROM unnest(CAST(:{prefix}id AS varchar[]), CAST(:{prefix}recipient AS varchar[]), "
        f"CAST(:{prefix}back AS bigint[]), CAST(:{prefix}type AS varchar[]), "
        f"CAST(:{prefix}referral AS varchar[]), CAST(:{prefix}created_at AS timestamptz[]), "
        f"CAST(:{prefix}data AS json[])) "
        "AS event(id, recipient_id, back, type, referral_id, created_at, data) "
        f"JOIN {advanced} AS advanced ON advanced.party_id = event.recipient_id)"
    )


def event_parameters(events: Iterable[Event], *, prefix: str) -> tuple[dict[str, Any], set[str]]:
    """The parameters of ``event_ctes`` for ``events`` (in the order they happened), and their recipients."""
    counts, rows = _in_cursor_order(events)
    parameters = {
        f"{prefix}party": list(counts),
        f"{prefix}count": list(counts.values()),
        f"{prefix}channel": CHANNEL,
        f"{prefix}id": [new_id() for _ in rows],
        f"{prefix}recipient": [party_id for party_id, _back, _queued in rows],
        f"{prefix}back": [back for _party_id, back, _queued in rows],
        f"{prefix}type": [queued.type.value for _party_id, _back, queued in rows],
        f"{prefix}referral": [queued.referral_id for _party_id, _back, queued in rows],
        f"{prefix}created_at": [queued.created_at for _party_id, _back, queued in rows],
        f"{prefix}data": _data_texts(queued for _party_id, _back, queued in rows),
    }
    return parameters, set(counts)


def _data_texts(events: Iterable[Event]) -> list[str]:
    """Each event's data as JSON text (as the column's JSON type would write it). An event's data is often
    one dict shared by its recipients (both parties of a case, the signed document inside): each is
    serialised once."""
    serialised: dict[int, str] = {}
    texts = []
    for queued in events:
        data_text = serialised.get(id(queued.data))
        if data_text is None:
            data_text = serialised[id(queued.data)] = json.dumps(queued.data)
        texts.append(data_text)
    return texts


def take_pending(
    session: AsyncSession, also: Iterable[Event], *, prefix: str
) -> tuple[dict[str, Any], set[str]]:
    """PostgreSQL: the parameters of ``event_ctes`` for the events emitted in the session's transaction so
    far, then ``also``, and their recipients, for the caller to write in the transaction's last statement;
    they are no longer written at commit. Once that statement has run, ``wake_after_commit`` the recipients
    (as the commit would have)."""
    pending: list[Event] = session.info.pop(PENDING_KEY, None) or []
    return event_parameters([*pending, *also], prefix=prefix)


def wake_after_commit(session: AsyncSession | Session, recipients: Iterable[str]) -> None:
    """Wake the feed readers of ``recipients`` in this process once the session's transaction commits
    (never, if it rolls back)."""
    session.info.setdefault(WAKE_KEY, set()).update(recipients)


def _in_cursor_order(events: Iterable[Event]) -> tuple[dict[str, int], list[tuple[str, int, Event]]]:
    """The recipients in sorted order (the order their cursor rows are locked in) with their number of
    events, and every event as ``(recipient, back, event)``: ``back`` is how many of the recipient's events
    follow it, so its cursor is the recipient's new last cursor minus ``back``."""
    by_recipient: dict[str, list[Event]] = {}
    for queued in events:
        by_recipient.setdefault(queued.recipient_id, []).append(queued)
    parties = sorted(by_recipient)
    rows = [
        (party_id, len(by_recipient[party_id]) - 1 - offset, queued)
        for party_id in parties
        for offset, queued in enumerate(by_recipient[party_id])
    ]
    return {party_id: len(by_recipient[party_id]) for party_id in parties}, rows


_POSTGRES_WRITE = text(f"WITH {event_ctes(prefix='event_')} SELECT count(*) FROM event_advanced")  # noqa: S608


@functools.cache
def _upsert_statement(parties: int) -> Any:
    """SQLite: the cursor upsert for this many parties. Written as text: SQLAlchemy does not cache the
    compiled form of an ``ON CONFLICT`` upsert, and compiling it again on every commit costs more than
    running it."""
    # Only numbered placeholders are formatted in; every value is a bound parameter.
    return text(_UPSERT.format(rows=", ".join(f"(:party_{n}, :count_{n})" for n in range(parties))))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    """Reserve the recipients' cursors and write the events: one statement on PostgreSQL (``event_ctes``,
    with the NOTIFY that wakes waiting feed readers in other processes), two on SQLite.

    The cursor rows are locked in sorted party order, so two writers never wait on each other in a cycle.
    """
    # Runs inside the async session's greenlet, so the synchronous Session API does real (async) I/O here.
    pending: list[Event] | None = session.info.pop(PENDING_KEY, None)
    if not pending:
        return
    if session.get_bind().dialect.name == "postgresql":
        parameters, recipients = event_parameters(pending, prefix="event_")
        session.execute(_POSTGRES_WRITE, parameters)
        wake_after_commit(session, recipients)
        return
    counts, events = _in_cursor_order(pending)
    params: dict[str, Any] = {}
    for n, (party_id, count) in enumerate(counts.items()):
        params[f"party_{n}"] = party_id
        params[f"count_{n}"] = count
    last_cursors = {row[0]: int(row[1]) for row in session.execute(_upsert_statement(len(counts)), params)}
    data_texts = _data_texts(queued for _party_id, _back, queued in events)
    rows: list[dict[str, Any]] = [
        {
            "id": new_id(),
            "recipient_id": party_id,
            "cursor": last_cursors[party_id] - back,
            "type": queued.type.value,
            "referral_id": queued.referral_id,
            "created_at": queued.created_at,
            "data": data_text,
        }
        for (party_id, back, queued), data_text in zip(events, data_texts, strict=True)
    ]
    session.execute(_INSERT_EVENTS, rows)
    wake_after_commit(session, counts)


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
