"""Single submissions that arrive together are stored together: fewer transactions, the same answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.models import AuditEntry
from referral.auth.principal import PartyKind, Principal
from referral.core.appkeys import engine_key, sessionmaker_key
from referral.feed.models import OutboxEvent
from referral.feed.outbox import Event, EventType, emit
from referral.referrals import service
from referral.referrals.models import Referral, ReferralItem, ReferralLink
from referral.referrals.routes import receipt_signer_key
from tests.auth.factories import TestParty, bearer, make_party, sign_document
from tests.referrals.test_api import count, referral_claims, settings  # noqa: F401 - the fixture


async def _post(client: TestClient[Any, Any], party: TestParty, compact: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/v1/referrals",
        data=compact,
        headers={**await bearer(client, party), "Content-Type": "application/jose"},
    )
    return response.status, await response.json()


async def _prepared(
    app: Any, party: TestParty, addressee: TestParty, url: str, **changes: Any
) -> service.PreparedReferral:
    """A referral of ``url`` by ``party`` to ``addressee``, prepared as a submission would be (not stored)."""
    principal = Principal(
        party_id=party.party_id,
        party_kind=PartyKind.AUTHORITY,
        client_id=party.client_id,
        scopes=frozenset({"referrals:write"}),
        token_id="test",
    )
    return await service.prepare_referral(
        app[sessionmaker_key],
        principal=principal,
        compact=sign_document(party, referral_claims(party, addressee, items=[{"url": url}], **changes)),
        received_at=datetime.now(UTC),
        receipts=app[receipt_signer_key],
        request_id="prepared",
    )


def _record_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group of referrals stored in one transaction."""
    sizes: list[int] = []
    store, store_unlinked = service.store_referrals, service.store_unlinked

    async def recording(session: AsyncSession, prepared: Sequence[service.PreparedReferral]) -> Any:
        sizes.append(len(prepared))
        return await store(session, prepared)

    async def recording_unlinked(connection: Any, prepared: Sequence[service.PreparedReferral]) -> Any:
        stored = await store_unlinked(connection, prepared)
        if stored is not None:  # else nothing was written: the group goes to store_referrals
            sizes.append(len(prepared))
        return stored

    monkeypatch.setattr(service, "store_referrals", recording)
    monkeypatch.setattr(service, "store_unlinked", recording_unlinked)
    return sizes


async def test_concurrent_submissions_share_transactions_and_each_gets_its_own_receipt(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_authority = await make_party(client, kind="authority", country="FR")
    documents = [
        (party, sign_document(party, referral_claims(party, provider)))
        for party in [authority, other_authority] * 12
    ]
    groups = _record_groups(monkeypatch)
    answers = await asyncio.gather(*(_post(client, party, compact) for party, compact in documents))
    assert [status for status, _ in answers] == [201] * len(documents)
    ids = {body["referral"]["id"] for _, body in answers}
    assert len(ids) == len(documents)
    assert len({body["receipt"] for _, body in answers}) == len(documents)
    # Grouped: 24 referrals in fewer transactions than referrals.
    assert sum(groups) == len(documents)
    assert max(groups) > 1, groups
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        issuers = dict((await session.execute(select(Referral.id, Referral.issuer_id))).all())
        submitted = (
            await session.execute(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "referral.submitted")
            )
        ).scalar_one()
        events = (
            await session.execute(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.type == "referral.submitted", OutboxEvent.referral_id.in_(ids))
            )
        ).scalar_one()
    assert set(issuers) == ids
    for (party, _compact), (_, body) in zip(documents, answers, strict=True):
        assert issuers[body["referral"]["id"]] == party.party_id
    assert submitted == len(documents)
    assert events == 2 * len(documents)  # each to its authority and to the provider


async def test_a_repeat_and_a_conflict_in_a_group_answer_as_they_would_alone(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    claims = referral_claims(authority, provider)
    original = sign_document(authority, claims)
    status, first = await _post(client, authority, original)
    assert status == 201
    conflicting = sign_document(authority, {**claims, "case_reference": "another"})
    fresh = [sign_document(authority, referral_claims(authority, provider)) for _ in range(6)]
    answers = await asyncio.gather(
        *(
            _post(client, authority, compact)
            for compact in [fresh[0], original, *fresh[1:3], conflicting, *fresh[3:]]
        )
    )
    statuses = [status for status, _ in answers]
    assert statuses == [201, 200, 201, 201, 409, 201, 201, 201]
    assert answers[1][1]["receipt"] == first["receipt"]
    assert answers[4][1]["type"].endswith("/jti-conflict")
    # Nothing of the refused or repeated documents was written twice, nothing of the rest lost.
    assert await count(client, Referral) == 7
    assert await count(client, ReferralItem) == 7 * len(claims["items"])


async def test_referrals_in_one_group_covering_the_same_url_are_linked(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    other_authority = await make_party(client, kind="authority", country="FR")
    url = "https://video.example.com/watch?v=together"
    compacts = [
        (party, sign_document(party, referral_claims(party, provider, items=[{"url": url}])))
        for party in (authority, other_authority)
    ]
    answers = await asyncio.gather(*(_post(client, party, compact) for party, compact in compacts))
    assert [status for status, _ in answers] == [201, 201]
    first, second = (body["referral"]["id"] for _, body in answers)
    assert await count(client, ReferralLink) == 2
    seen = await (await client.get(f"/v1/referrals/{second}", headers=await bearer(client, provider))).json()
    assert seen["related"] == [{"referral_id": first, "same_issuer": False}]


async def test_a_referral_written_by_a_concurrent_transaction_is_linked_when_it_commits(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("concurrent writing transactions exist only on PostgreSQL (SQLite: one connection)")
    app = client.server.app
    assert app is not None
    url = "https://video.example.com/watch?v=raced"
    first = await _prepared(app, authority, provider, url)
    second = sign_document(authority, referral_claims(authority, provider, items=[{"url": url}]))
    async with app[sessionmaker_key].begin() as session:
        await service.store_referrals(session, [first])
        # Not committed yet: the second submission must wait for it instead of missing it.
        racing = asyncio.ensure_future(_post(client, authority, second))
        await asyncio.sleep(0.5)
        assert not racing.done()
    status, body = await racing
    assert status == 201
    assert await count(client, ReferralLink) == 2
    seen = await (
        await client.get(f"/v1/referrals/{body['referral']['id']}", headers=await bearer(client, authority))
    ).json()
    assert seen["related"] == [{"referral_id": first.referral_id, "same_issuer": True}]


async def test_groups_that_find_each_others_issuers_referrals_commit_without_deadlock(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    """A group that must be linked sends ``referral.related`` events to issuers it learnt of from the
    look-up. Two such groups to different providers (so not ordered by the de-confliction lock), each finding
    a referral of the other's issuer, would take each other's event cursor rows in opposite orders if either
    held cursor rows before its commit (as it did when its submitted events were written with its rows)."""
    if backend != "postgresql":
        pytest.skip("concurrent writing transactions exist only on PostgreSQL (SQLite: one connection)")
    app = client.server.app
    assert app is not None
    other_authority = await make_party(client, kind="authority", country="FR")
    other_provider = await make_party(client, kind="provider", country="NL")
    first_url, second_url = "https://video.example.com/watch?v=one", "https://video.example.com/watch?v=two"
    # Earlier, committed: the other authority's referral of the first URL to the provider, and the
    # authority's referral of the second URL to the other provider.
    earlier = {}
    for party, addressee, url in (
        (other_authority, provider, first_url),
        (authority, other_provider, second_url),
    ):
        claims = referral_claims(party, addressee, items=[{"url": url}])
        status, body = await _post(client, party, sign_document(party, claims))
        assert status == 201
        earlier[party.party_id] = body["referral"]["id"]

    one = await _prepared(app, authority, provider, first_url)  # finds the other authority's referral
    two = await _prepared(app, other_authority, other_provider, second_url)  # finds the authority's referral

    async def store_alone(group: service.PreparedReferral) -> None:
        async with app[sessionmaker_key].begin() as session:
            await service.store_referrals(session, [group])

    async with app[sessionmaker_key].begin() as session:
        await service.store_referrals(session, [one])
        crossing = asyncio.ensure_future(store_alone(two))
        await asyncio.sleep(0.5)  # the second group runs its statement while the first is not committed
    await crossing  # a deadlock would fail one of the two (after PostgreSQL's deadlock_timeout)

    async with app[sessionmaker_key]() as session:
        rows = (
            await session.execute(
                select(
                    OutboxEvent.recipient_id, OutboxEvent.cursor, OutboxEvent.type, OutboxEvent.referral_id
                )
            )
        ).all()
    related = {
        (recipient, referral) for recipient, _cursor, kind, referral in rows if kind == "referral.related"
    }
    assert related == {
        (authority.party_id, one.referral_id),
        (other_authority.party_id, earlier[other_authority.party_id]),
        (provider.party_id, one.referral_id),
        (other_authority.party_id, two.referral_id),
        (authority.party_id, earlier[authority.party_id]),
        (other_provider.party_id, two.referral_id),
    }
    for party_id in {recipient for recipient, *_ in rows}:
        cursors = sorted(cursor for recipient, cursor, *_ in rows if recipient == party_id)
        assert cursors == list(range(1, len(cursors) + 1))  # every party's cursors without gaps


async def test_a_submission_with_nothing_to_link_is_one_statement_in_its_own_transaction(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    """PostgreSQL: the de-confliction locks, the look-up, the rows, the audit entry and the events of a group
    with nothing to link are one statement (in autocommit mode), so the locks are held only while PostgreSQL
    runs it. One that must be linked takes a transaction, whose events are written at commit."""
    if backend != "postgresql":
        pytest.skip("SQLite stores every group in a transaction (one writer, no locks to shorten)")
    app = client.server.app
    assert app is not None
    url = "https://video.example.com/watch?v=alone"
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = app[engine_key].sync_engine
    headers = {**await bearer(client, authority), "Content-Type": "application/jose"}
    event.listen(engine, "before_cursor_execute", record)
    try:
        compact = sign_document(authority, referral_claims(authority, provider, items=[{"url": url}]))
        response = await client.post("/v1/referrals", data=compact, headers=headers)
        assert response.status == 201
        alone = list(statements)
        statements.clear()
        compact = sign_document(authority, referral_claims(authority, provider, items=[{"url": url}]))
        response = await client.post("/v1/referrals", data=compact, headers=headers)
        assert response.status == 201
        linked = list(statements)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # Alone: one statement writes the referral and its events, after the look-up (which takes the locks).
    writes = [statement for statement in alone if "INSERT INTO" in statement]
    assert len(writes) == 1
    assert writes[0].startswith("WITH found AS (SELECT * FROM referral_overlaps(")
    assert "INSERT INTO referrals" in writes[0]
    assert "INSERT INTO outbox_events" in writes[0]
    # The second covers the same URL: that statement writes nothing, then a transaction stores and links
    # it, its events written at commit by a statement of their own.
    stores = [statement for statement in linked if "INSERT INTO referrals" in statement]
    assert len(stores) == 2
    assert all(
        statement.startswith("WITH found AS (SELECT * FROM referral_overlaps(") for statement in stores
    )
    assert "INSERT INTO outbox_events" not in stores[1]
    assert sum("INSERT INTO referral_links" in statement for statement in linked) == 1
    assert sum("INSERT INTO outbox_events" in statement for statement in linked) == 2
    assert await count(client, Referral) == 2
    assert await count(client, ReferralLink) == 2


async def test_a_group_linking_to_a_referral_being_updated_waits_for_it_without_deadlock(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    """A status update holds its referral's row (``FOR UPDATE``) and takes the event cursor rows at its
    commit; a group linking to that referral waits for the row (the link's foreign key). Had the group taken
    the cursor rows before (its submitted events written with its rows), each would wait for the other."""
    if backend != "postgresql":
        pytest.skip("concurrent writing transactions exist only on PostgreSQL (SQLite: one connection)")
    app = client.server.app
    assert app is not None
    url = "https://video.example.com/watch?v=busy"
    status, body = await _post(
        client,
        authority,
        sign_document(authority, referral_claims(authority, provider, items=[{"url": url}])),
    )
    assert status == 201
    busy = body["referral"]["id"]
    linking = await _prepared(app, authority, provider, url)

    async def store(group: service.PreparedReferral) -> None:
        async with app[sessionmaker_key].begin() as session:
            await service.store_referrals(session, [group])

    async with app[sessionmaker_key].begin() as session:  # as record_status does
        await session.execute(select(Referral.id).where(Referral.id == busy).with_for_update())
        storing = asyncio.ensure_future(store(linking))
        await asyncio.sleep(0.5)  # the group is waiting for the referral's row
        assert not storing.done()
        at = datetime.now(UTC)
        emit(
            session,
            [
                Event(party, EventType.STATUS_RECORDED, at, {"probe": True}, busy)
                for party in (authority.party_id, provider.party_id)
            ],
        )
    await storing  # a deadlock would fail one of the two
    assert await count(client, ReferralLink) == 2


async def test_a_jti_reused_for_another_provider_while_its_first_use_commits_answers_conflict(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty, backend: str
) -> None:
    """The one-statement path inserts the referrals before it takes any event cursor row: an insert that
    waits for a concurrent transaction with the same ``jti`` (to another provider, so not ordered by the
    de-confliction lock) must not hold the issuer's cursor row, which that transaction takes at its commit."""
    if backend != "postgresql":
        pytest.skip("concurrent writing transactions exist only on PostgreSQL (SQLite: one connection)")
    app = client.server.app
    assert app is not None
    other_provider = await make_party(client, kind="provider", country="NL")
    jti = "reused-while-committing"
    first = await _prepared(app, authority, provider, "https://video.example.com/watch?v=first", jti=jti)
    again = referral_claims(authority, other_provider, items=[{"url": "https://example.org/again"}], jti=jti)
    async with app[sessionmaker_key].begin() as session:
        await service.store_referrals(session, [first])  # its events are written at commit
        racing = asyncio.ensure_future(_post(client, authority, sign_document(authority, again)))
        await asyncio.sleep(0.5)  # the second waits for the first's jti
        assert not racing.done()
    status, body = await racing  # a deadlock would fail one of the two
    assert status == 409, body
    assert await count(client, Referral) == 1


async def test_the_de_confliction_look_up_is_planned_at_every_call(
    client: TestClient[Any, Any], backend: str
) -> None:
    """``referral_overlaps`` is planned for the table as it is at each call, never from a plan cached while
    referral_items was small (that plan probed URLs through the hash index, reading all of a provider's
    items)."""
    if backend != "postgresql":
        pytest.skip("SQLite has no plan cache to speak of")
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        config = await session.execute(
            text("SELECT proconfig FROM pg_proc WHERE proname = 'referral_overlaps'")
        )
        assert config.scalar_one() == ["plan_cache_mode=force_custom_plan"]
