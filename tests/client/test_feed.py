"""The feed follower and ``referral feed`` against a scripted stand-in, to reach failures on demand
(dropped connections, 503s, 403); ``test_live_delivery.py`` follows the real service. The contract:
``GET /v1/feed?after=&limit=&wait=`` → ``{"events": [{"cursor", "id", "type", "created_at", "data"}],
"next_cursor"}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from referral.client import (
    FeedEvent,
    FileCursorStore,
    MemoryCursorStore,
    PermissionDeniedError,
    ReferralClient,
)
from referral.config import Settings
from tests.client.conftest import FAST_RETRY, run_cli
from tests.client.fake import FakeService, hang_up, problem

ServerFactory = Callable[..., Coroutine[Any, Any, TestServer]]
EVENTS = [
    {
        "cursor": f"c{number}",
        "id": f"00000000-0000-7000-8000-00000000000{number}",
        "type": "referral.submitted",
        "created_at": f"2026-11-22T10:00:0{number}Z",
        "data": {"referral_id": f"r{number}"},
    }
    for number in range(1, 6)
]


async def feed_page(request: web.Request) -> web.StreamResponse:
    """The feed: events after the cursor, at most ``limit``, and the cursor to continue from."""
    after = request.query.get("after")
    start = next((n + 1 for n, event in enumerate(EVENTS) if event["cursor"] == after), 0)
    page = EVENTS[start : start + int(request.query.get("limit", "2"))]
    next_cursor = page[-1]["cursor"] if page else after
    return web.json_response({"events": page, "next_cursor": next_cursor})


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> FakeService:
    service = FakeService()
    service.handlers["/v1/feed"] = feed_page
    server = await aiohttp_server(service.app())
    service.url = str(server.make_url("")).rstrip("/")
    return service


async def no_wait(delay: float) -> None:
    return None


@pytest.fixture
async def client(fake: FakeService) -> AsyncIterator[ReferralClient]:
    async with ReferralClient(fake.url, fake.credentials, retry=FAST_RETRY, sleep=no_wait) as sdk:
        yield sdk


async def take(events: AsyncIterator[FeedEvent], count: int) -> list[str]:
    taken = []
    async for event in events:
        taken.append(event.id)
        if len(taken) == count:
            break
    return taken


async def test_the_follower_resumes_after_the_last_handled_event(
    fake: FakeService, client: ReferralClient, tmp_path: Path
) -> None:
    store = FileCursorStore(tmp_path / "feed.cursor")
    first = await take(client.follow_feed(store, wait=10), 3)
    assert first == [event["id"] for event in EVENTS[:3]]
    # The third event was handed out but the consumer stopped before asking for more: it comes again.
    assert store.load() == "c2"
    rest = await take(client.follow_feed(FileCursorStore(tmp_path / "feed.cursor"), wait=10), 3)
    assert rest == [event["id"] for event in EVENTS[2:]]
    assert [call.query.get("after") for call in fake.calls] == [None, "c2", "c2", "c4"]
    assert {call.query["wait"] for call in fake.calls} == {"10"}


async def test_the_follower_reconnects_through_transient_failures(
    fake: FakeService, client: ReferralClient
) -> None:
    # Each request retries FAST_RETRY.attempts times itself; beyond that the follower backs off and goes on.
    fake.script["/v1/feed"] = [
        *[hang_up] * FAST_RETRY.attempts,
        *[problem(503, "Service unavailable")] * FAST_RETRY.attempts,
        problem(429, "Too many requests", headers={"Retry-After": "0"}),
    ]
    retries: list[tuple[int, str]] = []
    events = client.follow_feed(
        MemoryCursorStore("c3"),
        on_retry=lambda failures, delay, error: retries.append((failures, type(error).__name__)),
    )
    assert await take(events, 2) == [EVENTS[3]["id"], EVENTS[4]["id"]]
    # aiohttp itself resends a GET once on a dropped keep-alive connection, so the count of
    # TransportErrors may vary; the exhausted 503s always reach the follower.
    assert [failures for failures, _ in retries] == list(range(1, len(retries) + 1))
    assert retries[-1][1] == "ServiceUnavailableError"
    assert {name for _, name in retries} <= {"TransportError", "ServiceUnavailableError"}


async def test_a_refusal_ends_the_follower(fake: FakeService, client: ReferralClient) -> None:
    fake.script["/v1/feed"] = [
        problem(403, "Forbidden", detail="this operation needs the scope 'referrals:read'")
    ]
    with pytest.raises(PermissionDeniedError):
        await take(client.follow_feed(MemoryCursorStore()), 1)


async def test_feed_command_prints_json_lines_and_keeps_its_cursor(
    fake: FakeService, settings_without_database: Settings, tmp_path: Path
) -> None:
    profile = tmp_path / "profile.json"
    descriptor = os.open(profile, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(
            {
                "url": fake.url,
                "party_id": fake.credentials.party_id,
                "client_id": fake.credentials.client_id,
                "client_key": fake.credentials.client_key.private_jwk(),
            },
            handle,
        )
    cursor_file = tmp_path / "cursor"
    options = ["--profile", str(profile), "--cursor-file", str(cursor_file)]

    page = await run_cli(settings_without_database, "feed", *options, "--wait", "0")
    assert page.status == 0, page.err
    assert page.json_lines() == EVENTS[:2]
    assert cursor_file.read_text().strip() == "c2"

    followed = await run_cli(settings_without_database, "feed", "--follow", "--max-events", "2", *options)
    assert followed.status == 0, followed.err
    assert followed.json_lines() == EVENTS[2:4]
    assert cursor_file.read_text().strip() == "c4"
    assert "following the feed from c2" in followed.err


@pytest.fixture
def settings_without_database(tmp_path: Path) -> Settings:
    """Settings for commands that only talk HTTP."""
    return Settings(var_dir=tmp_path / "var", public_url="http://127.0.0.1:9")
