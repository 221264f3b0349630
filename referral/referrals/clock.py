"""The referral clock: preservations whose ``preserved_until`` has passed become ``expired``.

Runs in the background (in-process by default). Each sweep is one transaction; on PostgreSQL the rows are
taken with ``FOR UPDATE SKIP LOCKED`` so several processes can sweep at once without doing a row twice.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.background import background_task
from referral.core.timeutil import utcnow
from referral.referrals.documents import DocumentType, Status
from referral.referrals.models import Referral
from referral.referrals.service import record_server_status

log = structlog.get_logger("referral.referrals.clock")

PRESERVING = (Status.PRESERVED.value, Status.PRESERVATION_EXTENDED.value)
SWEEP_BATCH = 500


async def expire_preservations(session: AsyncSession, *, now: datetime) -> int:
    """Mark up to one batch of lapsed preservations ``expired``; returns how many."""
    query = (
        select(Referral)
        .where(
            Referral.type == DocumentType.PRESERVATION_REQUEST.value,
            Referral.status.in_(PRESERVING),
            Referral.preserved_until.is_not(None),
            Referral.preserved_until <= now,
        )
        .order_by(Referral.preserved_until)
        .limit(SWEEP_BATCH)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    lapsed = list((await session.execute(query)).scalars())
    for referral in lapsed:
        await record_server_status(session, referral=referral, status=Status.EXPIRED, at=now, request_id=None)
        await session.execute(
            update(Referral)
            .where(Referral.id == referral.id)
            .values(status=Status.EXPIRED.value, closed_at=now, updated_at=now)
        )
    return len(lapsed)


async def _run(app: web.Application) -> None:
    interval = app[settings_key].clock_interval_seconds
    while True:
        try:
            async with app[sessionmaker_key].begin() as session:
                expired = await expire_preservations(session, now=utcnow())
            if expired:
                log.info("preservations_expired", count=expired)
        except (OperationalError, DBAPIError, OSError) as exc:
            log.warning("referral_clock_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)


clock_task = background_task("referral-clock", _run)
