"""The SDK's feed follower and webhook verification against the real service (not a fake)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from referral.client import FileCursorStore, verify_webhook
from referral.client.webhooks import WebhookMessage
from referral.config import Settings
from tests.client.conftest import LiveService, Party, removal_order, sdk


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True, "webhook_poll_interval_seconds": 0.05})


async def test_follow_the_feed_and_resume_from_the_stored_cursor(
    live: LiveService, authority: Party, provider: Party, tmp_path: Path
) -> None:
    cursor_file = tmp_path / "cursor"
    async with sdk(live, authority) as issuer, sdk(live, provider) as host:
        first = await issuer.submit(removal_order(provider.party_id, case_reference="FEED-1"))
        second = await issuer.submit(removal_order(provider.party_id, case_reference="FEED-2"))

        seen = []
        async for event in host.follow_feed(FileCursorStore(cursor_file), wait=5):
            if event.type == "referral.submitted":
                seen.append(event.data["referral"]["id"])
            if len(seen) == 2:
                break
        assert seen == [first.referral_id, second.referral_id]

        # The follower saves an event's cursor when the consumer asks for the next one; we broke off while
        # handling the second, so a resumed follower gives it again (at least once), then what came after.
        third = await issuer.submit(removal_order(provider.party_id, case_reference="FEED-3"))
        resumed = host.follow_feed(FileCursorStore(cursor_file), wait=5)
        again = []
        while third.referral_id not in again:
            event = await asyncio.wait_for(anext(resumed), 30)
            if event.type == "referral.submitted":
                again.append(event.data["referral"]["id"])
        await resumed.aclose()
        assert again == [second.referral_id, third.referral_id]
        # Receiving the documents in the feed delivered them.
        assert (await issuer.get_referral(first.referral_id))["status"] == "delivered"


@pytest.fixture
async def inbox() -> AsyncIterator[tuple[TestServer, asyncio.Queue[tuple[bytes, dict[str, str]]]]]:
    received: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    server = TestServer(app)
    await server.start_server()
    yield server, received
    await server.close()


async def test_webhook_deliveries_verify_with_the_sdk(
    live: LiveService, authority: Party, provider: Party, inbox: tuple[TestServer, Any]
) -> None:
    server, received = inbox
    async with sdk(live, authority) as issuer, sdk(live, provider) as host:
        response = await host.request(
            "POST",
            "/v1/webhooks",
            json_body={"url": str(server.make_url("/hooks")), "event_types": ["referral.submitted"]},
        )
        webhook = response.json()
        submission = await issuer.submit(removal_order(provider.party_id, case_reference="HOOK-1"))
        body, headers = await asyncio.wait_for(received.get(), 30)

    by_secret: WebhookMessage = verify_webhook(body, headers, secret=webhook["secret"])
    by_key: WebhookMessage = verify_webhook(body, headers, public_key=webhook["signing_public_key"])
    assert by_secret.id == by_key.id == headers["webhook-id"]
    assert by_secret.json()["data"]["referral"]["id"] == submission.referral_id
