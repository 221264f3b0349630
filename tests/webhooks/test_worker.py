"""``referral worker`` as a real process: it delivers webhooks, and when it is killed mid-delivery (SIGKILL),
the next worker sends the same message again, with the same ``webhook-id``, once the lease has run out."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from referral.app import create_app
from referral.config import Settings
from tests.auth.factories import make_party
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_webhooks import deliveries, eventually, submit_one, subscribe

WorkerFactory = Callable[[], Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"run_background_tasks": False, "webhook_timeout_seconds": 1.0, "webhook_lease_seconds": 2.0}
    )


def worker_environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "REFERRAL_DATABASE_URL": settings.database_url,
        "REFERRAL_VAR_DIR": str(settings.var_dir),
        "REFERRAL_LOG_FORMAT": "json",
        "REFERRAL_WEBHOOK_ALLOW_PRIVATE": "true",
        "REFERRAL_WEBHOOK_TIMEOUT_SECONDS": "1",
        "REFERRAL_WEBHOOK_LEASE_SECONDS": "2",
        "REFERRAL_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
        "REFERRAL_WEBHOOK_RETRY_DELAYS": "[0.1, 0.1]",
    }


@asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "referral",
        "worker",
        env=worker_environment(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_a_worker_process_delivers_and_stops_cleanly(
    settings: Settings, aiohttp_client: Any, receiver: Receiver
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    webhook = await subscribe(client, provider, receiver.url, event_types=["referral.submitted"])
    async with worker(settings) as process:
        await submit_one(client, authority, provider)
        (received,) = await receiver.wait_for(1)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    (delivery,) = await deliveries(client, provider, webhook["id"])
    assert delivery["webhook_id"] == received.headers["webhook-id"]
    assert delivery["state"] == "succeeded"


async def test_a_worker_killed_mid_delivery_is_succeeded_by_the_next_with_the_same_id(
    settings: Settings, aiohttp_client: Any, receiver: Receiver
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    webhook = await subscribe(client, provider, receiver.url, event_types=["referral.submitted"])
    receiver.hold = asyncio.Event()  # the receiver takes the first request and does not answer yet
    async with worker(settings) as first:
        await submit_one(client, authority, provider)
        (in_flight,) = await receiver.wait_for(1)
        first.kill()  # SIGKILL mid-delivery: no outcome is recorded
        await first.wait()
    receiver.hold.set()
    async with worker(settings):
        received = await receiver.wait_for(2)

        async def succeeded() -> bool:
            (delivery,) = await deliveries(client, provider, webhook["id"])
            return bool(delivery["state"] == "succeeded")

        await eventually(succeeded)
    assert received[1].headers["webhook-id"] == in_flight.headers["webhook-id"]
    assert received[1].body == in_flight.body
    (delivery,) = await deliveries(client, provider, webhook["id"])
    first_attempt, second_attempt = delivery["attempts"]
    assert first_attempt["error"] == "no outcome recorded: the worker stopped during the attempt"
    assert second_attempt["status_code"] == 204
