"""While no subscription is enabled the delivery loop does no database work on the commits that wake it, and
a new subscription, made in this process or another, still gets its deliveries at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text

from referral.app import create_app
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.webhooks import delivery
from tests.auth.factories import make_party
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_webhooks import submit_one, subscribe


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``limit`` of every delivery round the loops run."""
    started: list[int] = []
    deliver_round = delivery.deliver_round

    async def counted(app: Any, *, limit: int) -> list[delivery.Claimed]:
        started.append(limit)
        return await deliver_round(app, limit=limit)

    monkeypatch.setattr(delivery, "deliver_round", counted)
    return started


@pytest.fixture
def first_read(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a delivery loop has read whether any subscription is enabled."""
    done = asyncio.Event()
    exist = delivery.EnabledSubscriptions.exist

    async def reading(self: delivery.EnabledSubscriptions, app: Any) -> bool:
        try:
            return await exist(self, app)
        finally:
            done.set()

    monkeypatch.setattr(delivery.EnabledSubscriptions, "exist", reading)
    return done


async def listening(client: TestClient[Any, Any], *, processes: int) -> None:
    """Wait until this many connections LISTEN for wake-ups on the test's database."""
    app = client.server.app
    assert app is not None
    async with asyncio.timeout(10):
        while True:
            async with app[sessionmaker_key]() as session:
                count = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                )
            if count is not None and count >= processes:
                return
            await asyncio.sleep(0.05)


async def test_commits_run_no_rounds_until_a_subscription_exists(
    client: TestClient[Any, Any], receiver: Receiver, rounds: list[int], first_read: asyncio.Event
) -> None:
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    await asyncio.wait_for(first_read.wait(), 10)
    for _ in range(3):
        await submit_one(client, authority, provider)
    await asyncio.sleep(0.3)  # several wake-ups and poll intervals
    assert rounds == []
    await subscribe(client, provider, receiver.url, event_types=["referral.submitted"])
    await submit_one(client, authority, provider)
    (received,) = await receiver.wait_for(1, patience=5)
    assert b"referral.submitted" in received.body
    assert rounds


async def test_a_subscription_made_in_another_process_is_seen_at_once(
    backend: str, settings: Settings, aiohttp_client: Any, receiver: Receiver, first_read: asyncio.Event
) -> None:
    if backend != "postgresql":
        pytest.skip("wake-ups cross processes only on PostgreSQL")
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings.model_copy(update={"run_background_tasks": False}))
    )
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    # The worker would not look again by itself for an hour: only the NOTIFY of the subscription can tell it.
    worker = create_app(settings.model_copy(update={"webhook_poll_interval_seconds": 3600.0}))
    async with TestServer(worker):
        await asyncio.wait_for(first_read.wait(), 10)
        await listening(client, processes=2)
        await asyncio.sleep(0.5)  # the worker reads again when its LISTEN connection is up: let it finish
        await subscribe(client, provider, receiver.url, event_types=["referral.submitted"])
        await submit_one(client, authority, provider)
        await receiver.wait_for(1, patience=5)
