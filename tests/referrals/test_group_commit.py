"""Single submissions that arrive together are stored together: fewer transactions, the same answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.models import AuditEntry
from referral.auth.principal import PartyKind, Principal
from referral.core.appkeys import sessionmaker_key
from referral.feed.models import OutboxEvent
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


def _record_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group of referrals stored in one transaction."""
    sizes: list[int] = []
    store = service.store_referrals

    async def recording(session: AsyncSession, prepared: Sequence[service.PreparedReferral]) -> Any:
        sizes.append(len(prepared))
        return await store(session, prepared)

    monkeypatch.setattr(service, "store_referrals", recording)
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
    principal = Principal(
        party_id=authority.party_id,
        party_kind=PartyKind.AUTHORITY,
        client_id=authority.client_id,
        scopes=frozenset({"referrals:write"}),
        token_id="test",
    )
    first = await service.prepare_referral(
        app[sessionmaker_key],
        principal=principal,
        compact=sign_document(authority, referral_claims(authority, provider, items=[{"url": url}])),
        received_at=datetime.now(UTC),
        receipts=app[receipt_signer_key],
        request_id="raced",
    )
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
