"""The statistics scenario's bulk seeder leaves the database as a year of the running service would have."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from bench import seed as seeder
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.core.timeutil import utcnow
from referral.referrals.clock import expire_preservations, flag_overdue, warn_expiring
from referral.referrals.models import Referral
from tests.auth.factories import make_party


async def seed_between_two_parties(client: TestClient[Any, Any], settings: Settings, count: int) -> None:
    """An authority and a provider, and ``count`` referrals between them from the bench's bulk seeder."""
    await make_party(client, kind="authority", country="DE")
    await make_party(client, kind="provider", country="IE")
    await seeder.seed(settings.database_url, count)


async def test_seeded_history_leaves_the_referral_clock_nothing_to_do(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    """Removal orders undecided at their deadline were flagged overdue, lapsed preservations expired and
    those about to lapse warned of, as the clock would have done: a service started on the seeded database
    has no backlog of sweeps running beside what the bench measures."""
    await seed_between_two_parties(client, settings, 20_000)
    app = client.server.app
    assert app is not None
    sessions = app[sessionmaker_key]
    async with sessions() as session:
        flagged = await session.scalar(
            select(func.count()).select_from(Referral).where(Referral.overdue_notified_at.is_not(None))
        )
        expired = await session.scalar(
            select(func.count()).select_from(Referral).where(Referral.status == "expired")
        )
        warned = await session.scalar(
            select(func.count()).select_from(Referral).where(Referral.expiry_warned_until.is_not(None))
        )
    assert flagged, "overdue removal orders were flagged"
    assert expired, "lapsed preservations were expired"
    assert warned, "preservations about to lapse were warned of"
    now = utcnow()
    warning = timedelta(days=settings.preservation_warning_days)
    async with sessions.begin() as session:
        assert await flag_overdue(session, now=now) == 0
        assert await warn_expiring(session, now=now, warning=warning) == 0
        assert await expire_preservations(session, now=now) == 0
