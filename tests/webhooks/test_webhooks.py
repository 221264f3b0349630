"""Webhooks end to end: a real receiver verifies the Standard Webhooks signatures; failures, retries, 410,
manual retries, pings, leases after a worker dies, and two workers on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from referral.app import create_app
from referral.audit.models import AuditEntry
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.core.timeutil import utcnow
from referral.referrals.models import Referral
from referral.webhooks.delivery import attempt, claim_due, deliver_round
from referral.webhooks.models import WebhookAttempt, WebhookDelivery
from tests.auth.factories import TestParty, bearer, make_party
from tests.referrals.test_api import referral_claims, submit
from tests.webhooks.conftest import Received, Receiver


async def subscribe(
    client: TestClient[Any, Any], party: TestParty, url: str, *, expect: int = 201, **fields: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v1/webhooks", json={"url": url, **fields}, headers=await bearer(client, party)
    )
    body: dict[str, Any] = await response.json()
    assert response.status == expect, body
    return body


async def submit_one(client: TestClient[Any, Any], authority: TestParty, provider: TestParty) -> str:
    status, body, _compact = await submit(client, authority, referral_claims(authority, provider))
    assert status == 201, body
    referral_id: str = body["referral"]["id"]
    return referral_id


async def deliveries(client: TestClient[Any, Any], party: TestParty, webhook_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=await bearer(client, party))
    assert response.status == 200
    page: list[dict[str, Any]] = (await response.json())["deliveries"]
    return page


async def eventually(check: Callable[[], Awaitable[bool]], patience: float = 20) -> None:
    """Poll the API until ``check`` holds (what a client would do); fail after ``patience`` seconds."""
    async with asyncio.timeout(patience):
        while not await check():  # noqa: ASYNC110 - the state is in the server, read over HTTP
            await asyncio.sleep(0.05)


def verify_ed25519(received: Received, public_key_text: str) -> None:
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_text.removeprefix("whpk_")))
    signatures = dict(part.split(",", 1) for part in received.headers["webhook-signature"].split(" "))
    content = (
        f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    )
    public_key.verify(base64.b64decode(signatures["v1a"]), content)


async def test_a_submission_is_pushed_signed_and_delivers_the_referral(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    webhook = await subscribe(client, provider, receiver.url, event_types=["referral.submitted"])
    assert webhook["secret"].startswith("whsec_")
    assert webhook["enabled"] is True
    referral_id = await submit_one(client, authority, provider)

    (received,) = await receiver.wait_for(1)
    payload = Webhook(webhook["secret"]).verify(received.body, received.headers)
    verify_ed25519(received, webhook["signing_public_key"])
    assert payload["type"] == "referral.submitted"
    assert payload["id"] == received.headers["webhook-id"]
    assert set(payload) == {"type", "id", "created_at", "data"}
    assert payload["data"]["referral"]["id"] == referral_id
    assert received.headers["Content-Type"] == "application/json"

    async def delivered() -> bool:
        response = await client.get(f"/v1/referrals/{referral_id}", headers=await bearer(client, authority))
        return bool((await response.json())["status"] == "delivered")

    await eventually(delivered)
    (delivery,) = await deliveries(client, provider, webhook["id"])
    assert delivery["state"] == "succeeded"
    assert delivery["webhook_id"] == payload["id"]
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [204]
    assert delivery["attempts"][0]["latency_ms"] >= 0

    # The secret is shown once: never in reads.
    response = await client.get(f"/v1/webhooks/{webhook['id']}", headers=await bearer(client, provider))
    assert "secret" not in await response.json()
    listed = await client.get("/v1/webhooks", headers=await bearer(client, provider))
    assert [one["id"] for one in (await listed.json())["webhooks"]] == [webhook["id"]]


async def test_event_types_filter_what_is_pushed(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    await subscribe(client, authority, receiver.url, event_types=["status.recorded"])
    referral_id = await submit_one(client, authority, provider)
    # The provider's first read delivers it: status.recorded (delivered) for the authority, nothing else.
    await client.get(f"/v1/referrals/{referral_id}", headers=await bearer(client, provider))
    (received,) = await receiver.wait_for(1)
    body = json.loads(received.body)
    assert body["type"] == "status.recorded"
    assert body["data"]["status"]["status"] == "delivered"
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1


async def test_a_failing_receiver_is_retried_with_the_same_id_until_it_recovers(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    receiver.script = [(500, {}), (503, {})]
    webhook = await subscribe(client, provider, receiver.url)
    await submit_one(client, authority, provider)
    received = await receiver.wait_for(3)
    assert len({one.headers["webhook-id"] for one in received}) == 1
    for one in received:
        Webhook(webhook["secret"]).verify(one.body, one.headers)

    async def succeeded() -> bool:
        (delivery,) = await deliveries(client, provider, webhook["id"])
        return bool(delivery["state"] == "succeeded")

    await eventually(succeeded)
    (delivery,) = await deliveries(client, provider, webhook["id"])
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 503, 204]
    assert delivery["attempts"][0]["error"] == "the endpoint answered 500"
    assert delivery["attempts"][2]["error"] is None


async def test_retry_after_is_honoured(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    receiver.script = [(429, {"Retry-After": "2"})]
    webhook = await subscribe(client, provider, receiver.url)
    await submit_one(client, authority, provider)
    await receiver.wait_for(1)

    async def scheduled() -> bool:
        (delivery,) = await deliveries(client, provider, webhook["id"])
        return bool(delivery["attempts"][0]["finished_at"])

    await eventually(scheduled)
    (delivery,) = await deliveries(client, provider, webhook["id"])
    finished = datetime.fromisoformat(delivery["attempts"][0]["finished_at"])
    next_attempt = datetime.fromisoformat(delivery["next_attempt_at"])
    assert next_attempt - finished >= timedelta(seconds=1.9)
    await receiver.wait_for(2)


async def test_410_gone_disables_the_subscription(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    receiver.script = [(410, {})]
    webhook = await subscribe(client, provider, receiver.url)
    await submit_one(client, authority, provider)
    await receiver.wait_for(1)

    async def disabled() -> bool:
        response = await client.get(f"/v1/webhooks/{webhook['id']}", headers=await bearer(client, provider))
        return not (await response.json())["enabled"]

    await eventually(disabled)
    response = await client.get(f"/v1/webhooks/{webhook['id']}", headers=await bearer(client, provider))
    assert (await response.json())["disabled_reason"] == "the endpoint answered 410 Gone"
    await submit_one(client, authority, provider)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1
    ping = await client.post(f"/v1/webhooks/{webhook['id']}/ping", headers=await bearer(client, provider))
    assert ping.status == 409


async def test_exhausted_retries_fail_the_delivery_and_disable_with_a_reason(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    receiver.default = 500
    webhook = await subscribe(client, provider, receiver.url)
    await submit_one(client, authority, provider)
    await receiver.wait_for(4)  # the first attempt and the three retries of the test schedule

    async def failed() -> bool:
        (delivery,) = await deliveries(client, provider, webhook["id"])
        return bool(delivery["state"] == "failed")

    await eventually(failed)
    (delivery,) = await deliveries(client, provider, webhook["id"])
    assert len(delivery["attempts"]) == 4
    response = await client.get(f"/v1/webhooks/{webhook['id']}", headers=await bearer(client, provider))
    state = await response.json()
    assert state["enabled"] is False
    assert "failed 4 attempts" in state["disabled_reason"]
    assert "answered 500" in state["disabled_reason"]
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        actions = (
            await session.execute(select(AuditEntry.action).where(AuditEntry.subject_id == webhook["id"]))
        ).scalars()
        assert sorted(actions) == ["webhook.created", "webhook.disabled"]


async def test_a_failed_delivery_can_be_retried_by_hand(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    receiver.script = [(500, {})] * 2
    webhook = await subscribe(client, provider, receiver.url)
    headers = await bearer(client, provider)
    await submit_one(client, authority, provider)
    (first,) = await receiver.wait_for(1)

    async def finished() -> bool:
        (delivery,) = await deliveries(client, provider, webhook["id"])
        return bool(delivery["state"] == "succeeded")

    await eventually(finished)
    (delivery,) = await deliveries(client, provider, webhook["id"])
    retry_url = f"/v1/webhooks/{webhook['id']}/deliveries/{delivery['id']}/retry"
    response = await client.post(retry_url, headers=headers)
    assert response.status == 202, await response.json()
    assert (await response.json())["state"] == "pending"
    received = await receiver.wait_for(4)
    assert received[-1].headers["webhook-id"] == first.headers["webhook-id"]
    await eventually(finished)
    unknown = await client.post(f"/v1/webhooks/{webhook['id']}/deliveries/{'0' * 36}/retry", headers=headers)
    assert unknown.status == 404


async def test_ping_sends_now_and_answers_with_the_attempt(
    client: TestClient[Any, Any], provider: TestParty, receiver: Receiver
) -> None:
    webhook = await subscribe(client, provider, receiver.url)
    response = await client.post(f"/v1/webhooks/{webhook['id']}/ping", headers=await bearer(client, provider))
    assert response.status == 200
    delivery = await response.json()
    assert delivery["event_type"] == "webhook.ping"
    assert delivery["state"] == "succeeded"
    assert delivery["attempts"][0]["status_code"] == 204
    (received,) = await receiver.wait_for(1)
    payload = Webhook(webhook["secret"]).verify(received.body, received.headers)
    assert payload["data"] == {"webhook_id": webhook["id"]}

    receiver.default = 500
    response = await client.post(f"/v1/webhooks/{webhook['id']}/ping", headers=await bearer(client, provider))
    failed = await response.json()
    assert failed["state"] == "failed"
    assert failed["attempts"][0]["error"] == "the endpoint answered 500"
    assert len(failed["attempts"]) == 1
    state = await client.get(f"/v1/webhooks/{webhook['id']}", headers=await bearer(client, provider))
    assert (await state.json())["enabled"] is True, "a failed ping does not disable the subscription"


async def test_redirects_are_not_followed(
    client: TestClient[Any, Any], provider: TestParty, receiver: Receiver
) -> None:
    receiver.script = [(307, {"Location": "http://169.254.169.254/latest/meta-data/"})]
    webhook = await subscribe(client, provider, receiver.url)
    response = await client.post(f"/v1/webhooks/{webhook['id']}/ping", headers=await bearer(client, provider))
    delivery = await response.json()
    assert delivery["attempts"][0]["status_code"] == 307
    assert "redirects are not followed" in delivery["attempts"][0]["error"]
    assert len(receiver.received) == 1


async def test_a_delivery_whose_worker_died_is_sent_again_with_the_same_id(
    settings: Settings, aiohttp_client: Any, receiver: Receiver
) -> None:
    """A worker claims a delivery and dies before recording the outcome: once the lease runs out, the next
    worker sends it again with the same webhook-id, and the dead attempt is closed with an explanation."""
    app = create_app(settings.model_copy(update={"run_background_tasks": False}))
    client = await aiohttp_client(app)
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    webhook = await subscribe(client, provider, receiver.url)
    await submit_one(client, authority, provider)
    (claimed,) = await deliver_round(app, limit=10)  # ... and the worker dies here
    async with app[sessionmaker_key].begin() as session:
        assert (
            await claim_due(session, now=utcnow(), limit=10, lease=30) == []
        )  # leased: nobody else sends it
    later = utcnow() + timedelta(seconds=settings.webhook_lease_seconds + 1)
    async with app[sessionmaker_key].begin() as session:
        (again,) = await claim_due(session, now=later, limit=10, lease=30)
    assert again.message_id == claimed.message_id
    assert again.number == 2
    await attempt(app, again)
    (received,) = await receiver.wait_for(1)
    assert received.headers["webhook-id"] == claimed.message_id
    (delivery,) = await deliveries(client, provider, webhook["id"])
    assert delivery["state"] == "succeeded"
    assert delivery["attempts"][0]["error"] == "no outcome recorded: the worker stopped during the attempt"
    assert delivery["attempts"][1]["status_code"] == 204


async def test_two_workers_on_postgresql_never_send_an_attempt_twice(
    backend: str, settings: Settings, client: TestClient[Any, Any], receiver: Receiver
) -> None:
    if backend != "postgresql":
        pytest.skip("several workers share a database only on PostgreSQL")
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    await subscribe(client, provider, receiver.url, event_types=["referral.submitted"])
    second = create_app(settings)  # a second process with its own delivery loop, on the same database
    async with TestClient(TestServer(second)):
        await asyncio.gather(*(submit_one(client, authority, provider) for _ in range(30)))
        await receiver.wait_for(30)
        await asyncio.sleep(0.5)
    ids = Counter(one.headers["webhook-id"] for one in receiver.received)
    assert len(ids) == 30
    assert set(ids.values()) == {1}
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookAttempt)) == 30
        states = (await session.execute(select(WebhookDelivery.state))).scalars()
        assert set(states) == {"succeeded"}
        statuses = (await session.execute(select(Referral.status))).scalars()
        assert set(statuses) == {"delivered"}


async def test_deleting_stops_delivery_and_hides_the_subscription(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, receiver: Receiver
) -> None:
    webhook = await subscribe(client, provider, receiver.url)
    headers = await bearer(client, provider)
    response = await client.delete(f"/v1/webhooks/{webhook['id']}", headers=headers)
    assert response.status == 204
    assert (await client.get(f"/v1/webhooks/{webhook['id']}", headers=headers)).status == 404
    assert (await client.delete(f"/v1/webhooks/{webhook['id']}", headers=headers)).status == 404
    assert (await (await client.get("/v1/webhooks", headers=headers)).json()) == {"webhooks": []}
    await submit_one(client, authority, provider)
    await asyncio.sleep(0.3)
    assert receiver.received == []


async def test_subscriptions_belong_to_their_party(
    client: TestClient[Any, Any], provider: TestParty, receiver: Receiver
) -> None:
    webhook = await subscribe(client, provider, receiver.url)
    other = await make_party(client, kind="provider")
    headers = await bearer(client, other)
    for method, path in (
        ("GET", f"/v1/webhooks/{webhook['id']}"),
        ("DELETE", f"/v1/webhooks/{webhook['id']}"),
        ("GET", f"/v1/webhooks/{webhook['id']}/deliveries"),
        ("POST", f"/v1/webhooks/{webhook['id']}/ping"),
    ):
        response = await client.request(method, path, headers=headers)
        assert response.status == 404, (method, path)
    observer = await make_party(client, kind="observer")
    response = await client.get("/v1/webhooks", headers=await bearer(client, observer))
    assert response.status == 403
    assert (await client.get("/v1/webhooks")).status == 401


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["url"]),
        ({"url": "https://example.org/hooks", "event_types": ["referral.eaten"]}, ["event_types", 0]),
        ({"url": "https://example.org/hooks", "secret": "mine"}, ["secret"]),
        ({"url": "https://example.org/hooks", "description": "x" * 300}, ["description"]),
    ],
)
async def test_invalid_subscriptions_list_the_fields(
    client: TestClient[Any, Any], provider: TestParty, body: dict[str, Any], loc: list[Any]
) -> None:
    response = await client.post("/v1/webhooks", json=body, headers=await bearer(client, provider))
    assert response.status == 422
    problem = await response.json()
    assert [error["loc"] for error in problem["errors"]] == [loc]


async def test_bodies_that_are_not_json_objects(client: TestClient[Any, Any], provider: TestParty) -> None:
    headers = await bearer(client, provider)
    response = await client.post(
        "/v1/webhooks", data=b"url=x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert response.status == 415
    response = await client.post(
        "/v1/webhooks", data=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status == 400
    response = await client.post("/v1/webhooks", json=["https://example.org"], headers=headers)
    assert response.status == 422
