"""The referral clock: deadlines that pass without a decision, preservations about to lapse, and lapsed ones.

Runs in the background (in-process by default, or in ``referral worker``). Each sweep is one transaction per
kind, of up to ``SWEEP_BATCH`` referrals and a few statements however many it takes (their audit entries,
history rows and marks each written for the whole batch); on PostgreSQL the rows are taken with
``FOR UPDATE SKIP LOCKED`` so several processes can sweep at once without doing a row twice. Every sweep is
idempotent: the marks on the referral (``overdue_notified_at``, ``expiry_warned_until``, the ``expired``
status) make a repeated sweep find nothing to do.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from aiohttp import web
from sqlalchemy import Table, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.service import append_entries
from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.background import background_task, pause
from referral.core.timeutil import utcnow
from referral.feed.outbox import emit
from referral.referrals import events
from referral.referrals.documents import DocumentType, Status
from referral.referrals.models import Referral
from referral.referrals.service import overdue_condition, record_server_statuses, set_loaded

log = structlog.get_logger("referral.referrals.clock")

PRESERVING = (Status.PRESERVED.value, Status.PRESERVATION_EXTENDED.value)
SWEEP_BATCH = 500


_referrals = cast(Table, Referral.__table__)


async def _claim(session: AsyncSession, conditions: tuple[Any, ...], *, order_by: Any) -> list[Referral]:
    """Up to a batch of the referrals that meet a sweep's conditions, locked on PostgreSQL."""
    query = select(Referral).where(*conditions).order_by(order_by).limit(SWEEP_BATCH)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list((await session.execute(query)).scalars())


async def _mark(
    session: AsyncSession,
    claimed: list[Referral],
    conditions: tuple[Any, ...],
    values: dict[str, Any],
    *returning: Any,
) -> list[tuple[Referral, Any]]:
    """One ``UPDATE`` of the claimed rows that still meet the sweep's conditions: each referral it updated,
    in claim order, with its row of ``returning`` (after the id).

    On PostgreSQL the claimed rows are locked, so they all do. On SQLite the claim takes no lock, and
    another process (the API beside ``referral worker``) may have decided, extended or released one before
    this update took the write lock: such a row is left alone, and nothing is written or sent for it.
    """
    if not claimed:
        return []
    statement = (
        update(_referrals)
        .where(_referrals.c.id.in_([referral.id for referral in claimed]), *conditions)
        .values(values)
        .returning(_referrals.c.id, *returning)
    )
    marked = {row[0]: row for row in await session.execute(statement)}
    return [(referral, marked[referral.id]) for referral in claimed if referral.id in marked]


def _preserving() -> tuple[Any, ...]:
    return (
        Referral.type == DocumentType.PRESERVATION_REQUEST.value,
        Referral.status.in_(PRESERVING),
        Referral.preserved_until.is_not(None),
    )


async def flag_overdue(session: AsyncSession, *, now: datetime) -> int:
    """Emit ``referral.overdue`` (and audit it) once for each referral whose deadline passed undecided."""
    conditions = (overdue_condition(now), Referral.overdue_notified_at.is_(None))
    claimed = await _claim(session, conditions, order_by=Referral.deadline)
    lapsed = [
        referral for referral, _ in await _mark(session, claimed, conditions, {"overdue_notified_at": now})
    ]
    await append_entries(
        session,
        [
            {
                "action": "referral.overdue",
                "subject_type": "referral",
                "subject_id": referral.id,
                "request_id": None,
                "visible_to": [referral.issuer_id, referral.addressee_id],
            }
            for referral in lapsed
        ],
    )
    for referral in lapsed:
        set_loaded(referral, overdue_notified_at=now)
        emit(session, events.overdue(referral, now))
    return len(lapsed)


async def warn_expiring(session: AsyncSession, *, now: datetime, warning: timedelta) -> int:
    """Emit ``preservation.expiring`` once per ``preserved_until`` that falls within ``warning`` of now."""
    conditions = (
        *_preserving(),
        Referral.preserved_until > now,
        Referral.preserved_until <= now + warning,
        or_(
            Referral.expiry_warned_until.is_(None),
            Referral.expiry_warned_until != Referral.preserved_until,
        ),
    )
    claimed = await _claim(session, conditions, order_by=Referral.preserved_until)
    # Marked with the preserved_until it is warned of, as stored when marked (and so said in the event).
    marked = await _mark(
        session,
        claimed,
        conditions,
        {"expiry_warned_until": _referrals.c.preserved_until},
        _referrals.c.preserved_until,
    )
    for referral, (_id, preserved_until) in marked:
        set_loaded(referral, preserved_until=preserved_until, expiry_warned_until=preserved_until)
        emit(session, events.preservation_expiring(referral, now))
    return len(marked)


async def expire_preservations(session: AsyncSession, *, now: datetime) -> int:
    """Mark up to one batch of lapsed preservations ``expired``; returns how many."""
    conditions = (*_preserving(), Referral.preserved_until <= now)
    claimed = await _claim(session, conditions, order_by=Referral.preserved_until)
    expired = {"status": Status.EXPIRED.value, "closed_at": now, "updated_at": now}
    lapsed = [referral for referral, _ in await _mark(session, claimed, conditions, expired)]
    # The history rows name the status each referral had (read with the claim, still one of PRESERVING).
    statuses = await record_server_statuses(
        session, referrals=lapsed, status=Status.EXPIRED, at=now, request_id=None
    )
    for referral, status in zip(lapsed, statuses, strict=True):
        set_loaded(referral, **expired)
        emit(session, events.preservation_expired(referral, status, now))
    return len(lapsed)


async def tick(app: web.Application) -> dict[str, int]:
    """One pass of the clock, one transaction per sweep; returns what each sweep did."""
    settings = app[settings_key]
    warning = timedelta(days=settings.preservation_warning_days)
    done: dict[str, int] = {}
    async with app[sessionmaker_key].begin() as session:
        done["overdue"] = await flag_overdue(session, now=utcnow())
    async with app[sessionmaker_key].begin() as session:
        done["expiring"] = await warn_expiring(session, now=utcnow(), warning=warning)
    async with app[sessionmaker_key].begin() as session:
        done["expired"] = await expire_preservations(session, now=utcnow())
    return done


async def _run(app: web.Application, stopping: asyncio.Event) -> None:
    interval = app[settings_key].clock_interval_seconds
    while not stopping.is_set():
        try:
            done = await tick(app)
            if any(done.values()):
                log.info("referral_clock_ticked", **done)
        except (OperationalError, DBAPIError, PoolTimeoutError, OSError) as exc:
            log.warning("referral_clock_failed", error=type(exc).__name__)
        await pause(stopping, interval)


clock_task = background_task("referral-clock", _run)
