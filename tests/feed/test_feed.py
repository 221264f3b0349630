"""The feed: every change of a party's cases as events, in commit order, long-polled, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from referral.app import create_app
from referral.audit.models import AuditEntry
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.core.ids import new_id
from referral.core.timeutil import utcnow
from referral.feed.models import EventCursor, OutboxEvent
from referral.feed.notifier import notifier_key
from referral.referrals import clock
from referral.referrals.clock import expire_preservations, flag_overdue, warn_expiring
from referral.referrals.models import Referral, ReferralStatus
from tests.auth.factories import TestParty, bearer, make_party, sign_document
from tests.referrals.test_api import post_status, referral_claims, status_claims, submit
from tests.sqlcapture import sent_statements


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_background_tasks": False})


async def feed(
    client: TestClient[Any, Any], party: TestParty, *, expect: int = 200, **query: str | int
) -> dict[str, Any]:
    response = await client.get(
        "/v1/feed",
        params={key: str(value) for key, value in query.items()},
        headers=await bearer(client, party),
    )
    body: dict[str, Any] = await response.json()
    assert response.status == expect, body
    return body


def types(page: dict[str, Any]) -> list[str]:
    return [event["type"] for event in page["events"]]


async def submitted_id(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, **claims: Any
) -> str:
    status, body, _compact = await submit(client, authority, referral_claims(authority, provider, **claims))
    assert status == 201, body
    referral_id: str = body["referral"]["id"]
    return referral_id


async def test_a_lifecycle_as_both_parties_see_it(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    referral_id = await submitted_id(client, authority, provider)

    page = await feed(client, provider)
    assert types(page) == ["referral.submitted"]
    (event,) = page["events"]
    assert event["cursor"] == page["next_cursor"] == "1"
    assert event["data"]["referral"]["id"] == referral_id
    assert event["data"]["referral"]["status"] == "submitted"
    assert event["data"]["jws"].count(".") == 2
    assert set(event) == {"cursor", "id", "type", "created_at", "data"}

    # Receiving the document in the feed delivered it; the authority hears of the delivery.
    detail = await client.get(f"/v1/referrals/{referral_id}", headers=await bearer(client, authority))
    assert (await detail.json())["status"] == "delivered"
    page = await feed(client, authority)
    assert types(page) == ["referral.submitted", "status.recorded"]
    assert page["events"][1]["data"]["status"]["status"] == "delivered"
    assert [event["cursor"] for event in page["events"]] == ["1", "2"]

    status, _body = await post_status(
        client, provider, referral_id, status_claims(provider, referral_id, "acknowledged")
    )
    assert status == 201
    status, _body = await post_status(
        client, authority, referral_id, status_claims(authority, referral_id, "withdrawn")
    )
    assert status == 201

    page = await feed(client, provider, after=1)
    assert types(page) == ["status.recorded", "referral.withdrawn"]
    assert page["events"][0]["data"]["status"]["jws"].count(".") == 2
    assert page["next_cursor"] == "3"
    assert types(await feed(client, provider, after=3)) == []
    assert (await feed(client, provider, after=3))["next_cursor"] == "3"
    page = await feed(client, authority, after=2)
    assert types(page) == ["status.recorded", "referral.withdrawn"]

    # Pages: limit and after walk the same events.
    first = await feed(client, authority, limit=2)
    rest = await feed(client, authority, after=first["next_cursor"], limit=2)
    assert types(first) + types(rest) == [
        "referral.submitted",
        "status.recorded",
        "status.recorded",
        "referral.withdrawn",
    ]


async def test_a_providers_feed_read_is_an_audited_delivery(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    referral_id = await submitted_id(client, authority, provider)
    await feed(client, provider)
    await feed(client, provider)  # re-reading the content is read again, delivered once
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        actions = list(
            (
                await session.execute(
                    select(AuditEntry.action)
                    .where(AuditEntry.subject_id == referral_id)
                    .order_by(AuditEntry.id)
                )
            ).scalars()
        )
    assert actions == ["referral.submitted", "referral.delivered", "referral.read", "referral.read"]


async def test_racing_feed_reads_deliver_each_referral_once_and_audit_every_read(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    referral_ids = [await submitted_id(client, authority, provider) for _ in range(6)]
    # One is delivered first by another fetch (its detail); the page then delivers only the others.
    response = await client.get(f"/v1/referrals/{referral_ids[0]}", headers=await bearer(client, provider))
    assert response.status == 200
    pages = await asyncio.gather(*(feed(client, provider, limit=500) for _ in range(4)))
    for page in pages:
        listed = [
            event["data"]["referral"]["id"]
            for event in page["events"]
            if event["type"] == "referral.submitted"
        ]
        assert sorted(listed) == sorted(referral_ids)
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        entries = (
            await session.execute(
                select(AuditEntry.subject_id, AuditEntry.action).where(
                    AuditEntry.subject_id.in_(referral_ids)
                )
            )
        ).all()
        history = (
            await session.execute(
                select(ReferralStatus.referral_id, ReferralStatus.previous_status).where(
                    ReferralStatus.referral_id.in_(referral_ids), ReferralStatus.status == "delivered"
                )
            )
        ).all()
        statuses = set(
            (await session.execute(select(Referral.status).where(Referral.id.in_(referral_ids)))).scalars()
        )
    for referral_id in referral_ids:
        actions = sorted(action for subject, action in entries if subject == referral_id)
        reads = 4 + (referral_id == referral_ids[0])
        assert actions == ["referral.delivered"] + ["referral.read"] * reads + ["referral.submitted"], (
            referral_id
        )
    assert sorted(history) == sorted((referral_id, "submitted") for referral_id in referral_ids)
    assert statuses == {"delivered"}
    # The authority hears of each delivery once.
    delivered_events = [
        event["data"]["referral"]["id"]
        for event in (await feed(client, authority, limit=500))["events"]
        if event["type"] == "status.recorded" and event["data"]["status"]["status"] == "delivered"
    ]
    assert sorted(delivered_events) == sorted(referral_ids)


@contextlib.contextmanager
def statements(client: TestClient[Any, Any], containing: str = "") -> Iterator[list[str]]:
    """The statements (``containing`` some text) sent to the database while the block runs, on one line
    each; an executemany counts once."""
    app = client.server.app
    assert app is not None
    sent: list[str] = []
    with sent_statements(app[sessionmaker_key].kw["bind"], containing) as raw:
        try:
            yield sent
        finally:
            sent.extend(" ".join(statement.split()) for statement, _parameters in raw)


def referral_row_writes(client: TestClient[Any, Any]) -> contextlib.AbstractContextManager[list[str]]:
    """The statements that write ``referrals`` rows while the block runs."""
    return statements(client, "UPDATE referrals")


async def test_a_delivery_writes_each_referral_row_once(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    for _ in range(3):
        await submitted_id(client, authority, provider)
    with referral_row_writes(client) as writes:
        page = await feed(client, provider)
    assert len(page["events"]) >= 3
    assert len(writes) == 1, "the page's delivery is one UPDATE; no flush writes the rows again"
    referral_id = await submitted_id(client, authority, provider)
    with referral_row_writes(client) as writes:
        status, body = await post_status(
            client, provider, referral_id, status_claims(provider, referral_id, "acknowledged")
        )
    assert status == 201, body
    assert body["referral"]["status"] == "acknowledged"
    # On PostgreSQL the delivery and the acknowledgement are one UPDATE (the status's statement).
    assert len(writes) == (1 if backend == "postgresql" else 2), "the delivery and the clocks, written once"


async def test_acknowledging_what_was_never_fetched_delivers_it_in_the_same_statement(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    """Acknowledging a referral never fetched delivers it first: its history, its audit entries and the
    authority's feed tell of the delivery, then of the acknowledgement (with consecutive cursors). On
    PostgreSQL all of it is one statement: the referral's row, both audit entries and their queue rows, both
    history rows and the events of both."""
    referral_id = await submitted_id(client, authority, provider)
    headers = await bearer(client, provider)
    document = sign_document(provider, status_claims(provider, referral_id, "acknowledged"), typ="status+jws")
    with statements(client) as sent:
        response = await client.post(
            f"/v1/referrals/{referral_id}/statuses", json={"jws": document}, headers=headers
        )
    assert response.status == 201, await response.json()
    page = await feed(client, authority)
    assert types(page) == ["referral.submitted", "status.recorded", "status.recorded"]
    assert [event["data"]["status"]["status"] for event in page["events"][1:]] == [
        "delivered",
        "acknowledged",
    ]
    assert [event["data"]["referral"]["status"] for event in page["events"][1:]] == [
        "delivered",
        "acknowledged",
    ]
    assert [event["cursor"] for event in page["events"]] == ["1", "2", "3"]
    provider_page = await feed(client, provider)
    assert types(provider_page)[-1] == "status.recorded"
    assert provider_page["events"][-1]["data"]["status"]["status"] == "acknowledged"
    detail = await (
        await client.get(f"/v1/referrals/{referral_id}", headers=await bearer(client, authority))
    ).json()
    assert [(row["previous_status"], row["status"]) for row in detail["history"]] == [
        ("submitted", "delivered"),
        ("delivered", "acknowledged"),
    ]
    assert detail["delivered_at"] is not None
    assert detail["acknowledged_at"] is not None
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        actions = (
            await session.execute(
                select(AuditEntry.action)
                .where(AuditEntry.subject_id == referral_id, AuditEntry.action != "referral.read")
                .order_by(AuditEntry.id)
            )
        ).scalars()
        assert list(actions) == ["referral.submitted", "referral.delivered", "status.recorded"]
    if backend != "postgresql":
        return
    writes = [statement for statement in sent if statement.startswith(("WITH", "INSERT", "UPDATE"))]
    assert len(writes) == 1, writes
    assert writes[0].startswith("WITH changed AS (UPDATE referrals")
    for table in ("audit_entries", "audit_pending", "referral_statuses", "event_cursors", "outbox_events"):
        assert f"INSERT INTO {table} " in writes[0], table


async def test_refused_requests_write_no_events(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    status, _body, _compact = await submit(
        client, authority, referral_claims(authority, provider, items=[{"url": "not a url"}])
    )
    assert status == 422
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxEvent)) == 0
        assert await session.scalar(select(func.count()).select_from(EventCursor)) == 0


async def test_an_events_data_is_stored_as_its_json_type_writes_it(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    """A body shared by both recipients is serialised once and bound as text: the stored text must be what
    the column's JSON type would have written for each (the feed and the webhooks parse it back)."""
    referral_id = await submitted_id(client, authority, provider)
    app = client.server.app
    assert app is not None
    engine = app[sessionmaker_key].kw["bind"]
    write_json = OutboxEvent.__table__.c.data.type.bind_processor(engine.dialect)
    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                text("SELECT recipient_id, CAST(data AS TEXT) FROM outbox_events WHERE referral_id = :id"),
                {"id": referral_id},
            )
        ).all()
    assert sorted(recipient for recipient, _ in stored) == sorted([authority.party_id, provider.party_id])
    (data_text,) = {data_text for _, data_text in stored}
    data = json.loads(data_text)
    assert data["referral"]["id"] == referral_id
    assert write_json is not None
    assert data_text == write_json(data) == json.dumps(data)


async def test_concurrent_commits_get_contiguous_cursors_in_commit_order(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    referral_ids = await asyncio.gather(*(submitted_id(client, authority, provider) for _ in range(12)))
    page = await feed(client, provider, limit=500)
    # The example documents overlap, so referral.related events come too; no cursor is skipped or repeated.
    assert [event["cursor"] for event in page["events"]] == [
        str(n) for n in range(1, len(page["events"]) + 1)
    ]
    submitted = [event for event in page["events"] if event["type"] == "referral.submitted"]
    assert sorted(event["data"]["referral"]["id"] for event in submitted) == sorted(referral_ids)


async def test_long_poll_returns_as_soon_as_an_event_commits(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    headers = await bearer(client, provider)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(client.get("/v1/feed", params={"wait": "25"}, headers=headers))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    referral_id = await submitted_id(client, authority, provider)
    response = await waiting
    elapsed = loop.time() - started
    page = await response.json()
    assert types(page) == ["referral.submitted"]
    assert page["events"][0]["data"]["referral"]["id"] == referral_id
    assert elapsed < 12.5, "the request waited for its timeout instead of being woken"


async def test_long_poll_ends_empty_at_its_wait(client: TestClient[Any, Any], provider: TestParty) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    page = await feed(client, provider, wait=1, after=0)
    assert page == {"events": [], "next_cursor": "0"}
    assert loop.time() - started >= 0.9


async def test_waiting_requests_per_client_are_capped(
    settings: Settings, aiohttp_client: Any, authority: TestParty
) -> None:
    app = create_app(settings.model_copy(update={"feed_max_waiting_per_client": 1}))
    client = await aiohttp_client(app)
    provider = await make_party(client, kind="provider")
    headers = await bearer(client, provider)
    first = asyncio.create_task(client.get("/v1/feed", params={"wait": "3"}, headers=headers))
    await asyncio.sleep(0.3)
    second = await client.get("/v1/feed", params={"wait": "3"}, headers=headers)
    assert second.status == 429
    assert second.headers["Retry-After"] == "1"
    assert (await second.json())["type"].endswith("/too-many-requests")
    no_wait = await client.get("/v1/feed", headers=headers)
    assert no_wait.status == 200
    assert (await first).status == 200


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": "99999999999999999999"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"wait": "31"}, "wait"),
        ({"wait": "1.5"}, "wait"),
    ],
)
async def test_bad_parameters_are_400(
    client: TestClient[Any, Any], provider: TestParty, query: dict[str, str], detail: str
) -> None:
    body = await feed(client, provider, expect=400, **query)
    assert body["status"] == 400
    assert detail in body["detail"]


async def test_who_has_a_feed(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1/feed")).status == 401
    observer = await make_party(client, kind="observer")
    response = await client.get("/v1/feed", headers=await bearer(client, observer))
    assert response.status == 403
    assert response.content_type == "application/problem+json"


async def test_each_party_sees_only_its_own_events(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    await submitted_id(client, authority, provider)
    other_provider = await make_party(client, kind="provider")
    other_authority = await make_party(client, kind="authority")
    assert types(await feed(client, other_provider)) == []
    assert types(await feed(client, other_authority)) == []


async def test_overlapping_referrals_emit_related_events_naming_only_ids(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    other_authority = await make_party(client, kind="authority", country="FR")
    first = await submitted_id(client, authority, provider)
    claims = referral_claims(other_authority, provider)
    claims["items"] = referral_claims(authority, provider)["items"]
    status, body, _compact = await submit(client, other_authority, claims)
    assert status == 201
    second = body["referral"]["id"]

    def related(page: dict[str, Any]) -> list[dict[str, Any]]:
        return [event["data"] for event in page["events"] if event["type"] == "referral.related"]

    assert related(await feed(client, authority)) == [
        {"referral_id": first, "related": {"referral_id": second, "same_issuer": False}}
    ]
    assert related(await feed(client, other_authority)) == [
        {"referral_id": second, "related": {"referral_id": first, "same_issuer": False}}
    ]
    assert related(await feed(client, provider)) == [
        {"referral_id": second, "related": {"referral_id": first, "same_issuer": False}}
    ]


async def test_the_clock_emits_overdue_expiring_and_expired(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    app = client.server.app
    assert app is not None
    order_id = await submitted_id(client, authority, provider)
    preservation_id = await submitted_id(client, authority, provider, kind="preservation_request")
    for status in ("acknowledged", "preserved"):
        code, body = await post_status(
            client, provider, preservation_id, status_claims(provider, preservation_id, status)
        )
        assert code == 201, body
    async with app[sessionmaker_key]() as session:
        preserved_until = (await session.get(Referral, preservation_id)).preserved_until  # type: ignore[union-attr]
    assert preserved_until is not None
    sessions = app[sessionmaker_key]
    week = timedelta(days=7)

    async with sessions.begin() as session:
        assert await flag_overdue(session, now=utcnow() + timedelta(hours=2)) == 1
    async with sessions.begin() as session:
        assert await flag_overdue(session, now=utcnow() + timedelta(hours=3)) == 0
    async with sessions.begin() as session:
        assert await warn_expiring(session, now=preserved_until - timedelta(days=8), warning=week) == 0
    async with sessions.begin() as session:
        assert await warn_expiring(session, now=preserved_until - timedelta(days=6), warning=week) == 1
    async with sessions.begin() as session:
        assert await warn_expiring(session, now=preserved_until - timedelta(days=5), warning=week) == 0
    async with sessions.begin() as session:
        assert await expire_preservations(session, now=preserved_until) == 1

    events = (await feed(client, authority, limit=500))["events"]
    by_type = {
        (event["type"], event["data"]["referral"]["id"]) for event in events if "referral" in event["data"]
    }
    assert ("referral.overdue", order_id) in by_type
    assert ("preservation.expiring", preservation_id) in by_type
    assert ("preservation.expired", preservation_id) in by_type
    expiring = next(event for event in events if event["type"] == "preservation.expiring")
    assert expiring["data"]["preserved_until"] == expiring["data"]["referral"]["preserved_until"]
    provider_types = types(await feed(client, provider, limit=500))
    assert provider_types.count("referral.overdue") == 1
    assert provider_types.count("preservation.expiring") == 1
    assert provider_types.count("preservation.expired") == 1


async def test_a_clock_sweep_writes_each_table_once_however_many_referrals_it_takes(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    """A backlog (a restored database, a service that was down) is swept in batches of statements: one
    per table, not one or two per referral (a sweep of 500 took seconds of the API process's CPU)."""
    app = client.server.app
    assert app is not None
    orders = [await submitted_id(client, authority, provider) for _ in range(5)]
    preservations = [
        await submitted_id(client, authority, provider, kind="preservation_request") for _ in range(3)
    ]
    for preservation_id in preservations:
        for status in ("acknowledged", "preserved"):
            code, body = await post_status(
                client, provider, preservation_id, status_claims(provider, preservation_id, status)
            )
            assert code == 201, body
    sessions = app[sessionmaker_key]
    async with sessions() as session:
        until = list(
            (
                await session.execute(select(Referral.preserved_until).where(Referral.id.in_(preservations)))
            ).scalars()
        )
    first, last = min(until), max(until)  # type: ignore[type-var]
    later = max(utcnow() + timedelta(hours=2), last)

    def writes(sent: list[str], table: str) -> int:
        return sum(statement.startswith((f"INSERT INTO {table} ", f"UPDATE {table} ")) for statement in sent)

    with statements(client) as sent:
        async with sessions.begin() as session:
            assert await flag_overdue(session, now=later) == len(orders)
    assert [writes(sent, table) for table in ("referrals", "audit_entries", "audit_pending")] == [1, 1, 1]
    with statements(client) as sent:
        async with sessions.begin() as session:
            assert await warn_expiring(session, now=first - timedelta(days=6), warning=timedelta(days=7)) == 3
    assert writes(sent, "referrals") == 1
    async with sessions.begin() as session:
        assert await warn_expiring(session, now=first - timedelta(days=6), warning=timedelta(days=7)) == 0
    with statements(client) as sent:
        async with sessions.begin() as session:
            assert await expire_preservations(session, now=later) == len(preservations)
    written = ("referrals", "audit_entries", "audit_pending", "referral_statuses")
    assert [writes(sent, table) for table in written] == [1, 1, 1, 1]
    for sweep in (flag_overdue, expire_preservations):
        async with sessions.begin() as session:
            assert await sweep(session, now=later) == 0

    async with sessions() as session:
        rows = {
            referral.id: referral
            for referral in (
                await session.execute(select(Referral).where(Referral.id.in_(orders + preservations)))
            ).scalars()
        }
        expired = (
            await session.execute(
                select(ReferralStatus).where(
                    ReferralStatus.referral_id.in_(preservations), ReferralStatus.status == "expired"
                )
            )
        ).scalars()
        history = {status.referral_id: status.previous_status for status in expired}
        audited = (
            await session.execute(
                select(AuditEntry.action, func.count())
                .group_by(AuditEntry.action)
                .where(AuditEntry.action.in_(["referral.overdue", "referral.expired"]))
            )
        ).all()
    assert all(rows[order_id].overdue_notified_at is not None for order_id in orders)
    assert all(rows[preservation_id].status == "expired" for preservation_id in preservations)
    assert all(rows[preservation_id].closed_at is not None for preservation_id in preservations)
    assert all(rows[one].expiry_warned_until == rows[one].preserved_until for one in preservations)
    assert history == dict.fromkeys(preservations, "preserved")
    assert dict(audited) == {"referral.overdue": len(orders), "referral.expired": len(preservations)}
    provider_types = types(await feed(client, provider, limit=500))
    assert provider_types.count("referral.overdue") == len(orders)
    assert provider_types.count("preservation.expiring") == len(preservations)
    assert provider_types.count("preservation.expired") == len(preservations)


async def test_a_referral_decided_after_the_sweep_claimed_it_is_left_alone(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the claim takes no lock: another process may decide a removal order between the claim and
    the sweep's update. The update re-checks the conditions, and what it did not mark gets no entry and no
    event (here the claim is made to return a referral already decided)."""
    app = client.server.app
    assert app is not None
    order_id = await submitted_id(client, authority, provider)
    for status in ("acknowledged", "action_taken"):
        code, body = await post_status(client, provider, order_id, status_claims(provider, order_id, status))
        assert code == 201, body

    async def stale_claim(session: Any, *_args: Any, **_kwargs: Any) -> list[Referral]:
        return list((await session.execute(select(Referral).where(Referral.id == order_id))).scalars())

    monkeypatch.setattr(clock, "_claim", stale_claim)
    sessions = app[sessionmaker_key]
    async with sessions.begin() as session:
        assert await flag_overdue(session, now=utcnow() + timedelta(hours=2)) == 0
    async with sessions() as session:
        referral = await session.get(Referral, order_id)
        assert referral is not None
        assert referral.overdue_notified_at is None
        overdue_entries = await session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "referral.overdue")
        )
    assert overdue_entries == 0
    assert "referral.overdue" not in types(await feed(client, provider, limit=500))


async def test_an_extended_preservation_is_warned_again(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    app = client.server.app
    assert app is not None
    preservation_id = await submitted_id(client, authority, provider, kind="preservation_request")
    for status in ("acknowledged", "preserved"):
        code, body = await post_status(
            client, provider, preservation_id, status_claims(provider, preservation_id, status)
        )
        assert code == 201, body
    week = timedelta(days=7)
    async with app[sessionmaker_key].begin() as session:
        assert await warn_expiring(session, now=utcnow() + timedelta(days=25), warning=week) == 1
    later = (utcnow() + timedelta(days=60)).isoformat().replace("+00:00", "Z")
    code, body = await post_status(
        client,
        provider,
        preservation_id,
        status_claims(provider, preservation_id, "preservation_extended", preserved_until=later),
    )
    assert code == 201, body
    async with app[sessionmaker_key].begin() as session:
        assert await warn_expiring(session, now=utcnow() + timedelta(days=25), warning=week) == 0
        assert await warn_expiring(session, now=utcnow() + timedelta(days=55), warning=week) == 1


async def test_a_commit_in_another_process_wakes_a_waiting_request(
    backend: str, settings: Settings, authority: TestParty, provider: TestParty, client: TestClient[Any, Any]
) -> None:
    """Two app instances on one PostgreSQL database stand for two API processes: LISTEN/NOTIFY links them."""
    if backend != "postgresql":
        pytest.skip("several API processes share a database only on PostgreSQL")
    other: web.Application = create_app(settings)
    async with TestClient(TestServer(other)) as other_client:
        headers = await bearer(client, provider)
        waiting = asyncio.create_task(client.get("/v1/feed", params={"wait": "25"}, headers=headers))
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _body, _compact = await submit(other_client, authority, referral_claims(authority, provider))
        assert status == 201
        response = await waiting
        assert types(await response.json()) == ["referral.submitted"]
        assert loop.time() - started < 12.5, "the request was not woken by the other process's commit"


@pytest.mark.parametrize("other_commits", [True, False])
async def test_a_status_waiting_for_a_concurrent_jti_holds_no_cursor_rows(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str, other_commits: bool
) -> None:
    """PostgreSQL: while a status's statement waits for another transaction that inserted the same issuer
    and ``jti``, it holds no event cursor row (a writer holding them while it waited on a row lock could
    deadlock with one that holds that row); then it answers as that transaction's outcome says: 409 if it
    committed, 201 if it rolled back, with the delivery's and the acknowledgement's events in order."""
    if backend != "postgresql":
        pytest.skip("concurrent writing transactions exist only on PostgreSQL (SQLite: one connection)")
    app = client.server.app
    assert app is not None
    sessions = app[sessionmaker_key]
    acknowledged, other = [
        await submitted_id(
            client, authority, provider, items=[{"url": f"https://video.example.com/watch?v={n}"}]
        )
        for n in ("acknowledged", "other")
    ]
    claims = status_claims(provider, acknowledged, "acknowledged")
    async with sessions() as blocker, sessions() as probe:
        await blocker.execute(
            text(
                "INSERT INTO referral_statuses (id, referral_id, status, previous_status, actor_party_id, "
                "jti, recorded_at, audit_entry_id) VALUES (:id, :referral, 'acknowledged', 'delivered', "
                ":party, :jti, now(), :entry)"
            ),
            {
                "id": new_id(),
                "referral": other,
                "party": provider.party_id,
                "jti": claims["jti"],
                "entry": new_id(),
            },
        )
        posted = asyncio.ensure_future(post_status(client, provider, acknowledged, claims))
        waiting = 0
        for _ in range(250):
            waiting = await probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'WITH changed AS (UPDATE referrals%'"
                )
            )
            await probe.rollback()
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting == 1, "the status's statement waits for the other transaction's jti"
        try:
            async with probe.begin():
                # Refused at once (lock not available) if the waiting statement holds any of them.
                locked = (
                    await probe.execute(text("SELECT party_id FROM event_cursors FOR UPDATE NOWAIT"))
                ).all()
        except DBAPIError:
            locked = None
        await (blocker.commit() if other_commits else blocker.rollback())
        status, body = await asyncio.wait_for(posted, 10)
    assert locked is not None, "the status's statement held event cursor rows while it waited"
    assert {row[0] for row in locked} >= {authority.party_id, provider.party_id}
    page = await feed(client, authority)
    if other_commits:
        assert status == 409, body
        assert types(page) == ["referral.submitted", "referral.submitted"]
    else:
        assert status == 201, body
        assert types(page) == [
            "referral.submitted",
            "referral.submitted",
            "status.recorded",
            "status.recorded",
        ]
        assert [event["cursor"] for event in page["events"]] == ["1", "2", "3", "4"]


async def test_a_status_wakes_both_parties_readers_in_this_process_once_committed(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readers waiting in this process are woken by the status's commit itself (on PostgreSQL its events
    are written by its own statement, not at commit), not only later by the NOTIFY meant for other
    processes."""
    app = client.server.app
    assert app is not None
    referral_id = await submitted_id(client, authority, provider)
    woken: list[set[str]] = []
    notifier = app[notifier_key]
    wake = notifier.wake

    def recording(party_ids: Any) -> None:
        # Woken by the request's own commit: not by the LISTEN connection's callback (outside any task, or
        # in the listener's), which a NOTIFY of the same commit reaches a moment later.
        task = asyncio.current_task()
        if task is not None and task.get_name() != "feed-listen":
            woken.append(set(party_ids))
        wake(party_ids)

    monkeypatch.setattr(notifier, "wake", recording)
    code, body = await post_status(
        client, provider, referral_id, status_claims(provider, referral_id, "acknowledged")
    )
    assert code == 201, body
    assert {authority.party_id, provider.party_id} <= set().union(*woken)
