"""The referral clock: deadlines that pass without a decision, preservations about to lapse, and lapsed ones.

Runs in the background (in-process by default, or in ``referral worker``). Each sweep is one transaction per
kind; on PostgreSQL the rows are taken with ``FOR UPDATE SKIP LOCKED`` so several processes can sweep at once
without doing a row twice. Every sweep is idempotent: the marks on the referral (``overdue_notified_at``,
``expiry_warned_until``, the ``expired`` status) make a repeated sweep find nothing to do.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.service import append_entry
from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.background import background_task, pause
from referral.core.timeutil import utcnow
from referral.feed.outbox import emit
from referral.referrals import events
from referral.referrals.documents import DocumentType, Status
from referral.referrals.models import Referral
from referral.referrals.service import overdue_condition, record_server_status

log = structlog.get_logger("referral.referrals.clock")

PRESERVING = (Status.PRESERVED.value, Status.PRESERVATION_EXTENDED.value)
SWEEP_BATCH = 500


async def _claim(session: AsyncSession, query: Any) -> list[Referral]:
    query = query.limit(SWEEP_BATCH)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list((await session.execute(query)).scalars())


def _preserving() -> Any:
    return (
        Referral.type == DocumentType.PRESERVATION_REQUEST.value,
        Referral.status.in_(PRESERVING),
        Referral.preserved_until.is_not(None),
    )


async def flag_overdue(session: AsyncSession, *, now: datetime) -> int:
    """Emit ``referral.overdue`` (and audit it) once for each referral whose deadline passed undecided."""
    lapsed = await _claim(
        session,
        select(Referral)
        .where(overdue_condition(now), Referral.overdue_notified_at.is_(None))
        .order_by(Referral.deadline),
    )
    for referral in lapsed:
        await append_entry(
            session,
            action="referral.overdue",
            subject_type="referral",
            subject_id=referral.id,
            request_id=None,
            visible_to=[referral.issuer_id, referral.addressee_id],
        )
        await session.execute(
            update(Referral).where(Referral.id == referral.id).values(overdue_notified_at=now)
        )
        emit(session, events.overdue(referral, now))
    return len(lapsed)


async def warn_expiring(session: AsyncSession, *, now: datetime, warning: timedelta) -> int:
    """Emit ``preservation.expiring`` once per ``preserved_until`` that falls within ``warning`` of now."""
    expiring = await _claim(
        session,
        select(Referral)
        .where(
            *_preserving(),
            Referral.preserved_until > now,
            Referral.preserved_until <= now + warning,
            or_(
                Referral.expiry_warned_until.is_(None),
                Referral.expiry_warned_until != Referral.preserved_until,
            ),
        )
        .order_by(Referral.preserved_until),
    )
    for referral in expiring:
        await session.execute(
            update(Referral)
            .where(Referral.id == referral.id)
            .values(expiry_warned_until=referral.preserved_until)
        )
        emit(session, events.preservation_expiring(referral, now))
    return len(expiring)


async def expire_preservations(session: AsyncSession, *, now: datetime) -> int:
    """Mark up to one batch of lapsed preservations ``expired``; returns how many."""
    lapsed = await _claim(
        session,
        select(Referral)
        .where(*_preserving(), Referral.preserved_until <= now)
        .order_by(Referral.preserved_until),
    )
    for referral in lapsed:
        status = await record_server_status(
            session, referral=referral, status=Status.EXPIRED, at=now, request_id=None
        )
        await session.execute(
            update(Referral)
            .where(Referral.id == referral.id)
            .values(status=Status.EXPIRED.value, closed_at=now, updated_at=now)
        )
        referral.status, referral.closed_at, referral.updated_at = Status.EXPIRED.value, now, now
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
