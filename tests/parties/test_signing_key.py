"""``signing_key``: a party's key to verify what it signed; revoked, unknown or out-of-window keys refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import update

from referral.core.appkeys import sessionmaker_key
from referral.parties import keys as party_keys
from referral.parties.keys import BadSignature, SigningKeyRefused, signing_key
from referral.parties.models import PartyKey
from referral.parties.service import Actor, add_key
from tests.auth.factories import bearer, make_party, new_key, public_jwk, sign_document


def _sessionmaker(client: TestClient[Any, Any]) -> Any:
    app = client.server.app
    assert app is not None
    return app[sessionmaker_key]


@pytest.mark.parametrize("key_type", ["OKP", "EC"])
async def test_registered_key_verifies_documents_signed_by_jwcrypto(
    client: TestClient[Any, Any], key_type: str
) -> None:
    party = await make_party(client, kind="authority", key_type=key_type)
    compact = sign_document(party, {"iss": party.party_id, "jti": "r-1"})

    async with _sessionmaker(client)() as session:
        key = await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=datetime.now(UTC))

    assert key.alg == ("EdDSA" if key_type == "OKP" else "ES256")
    assert json.loads(key.verify_compact(compact).payload) == {"iss": party.party_id, "jti": "r-1"}


async def test_tampered_or_foreign_signatures_do_not_verify(client: TestClient[Any, Any]) -> None:
    party = await make_party(client, kind="authority")
    other = await make_party(client, kind="authority")
    async with _sessionmaker(client)() as session:
        key = await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=datetime.now(UTC))
    header, _payload, signature = sign_document(party, {"n": 1}).split(".")
    forged_payload = sign_document(party, {"n": 2}).split(".")[1]
    with pytest.raises(BadSignature):
        key.verify_compact(f"{header}.{forged_payload}.{signature}")
    with pytest.raises(BadSignature):
        # Another party's document, under that party's own kid.
        key.verify_compact(sign_document(other, {"n": 1}))


async def test_unknown_kid_is_refused(client: TestClient[Any, Any]) -> None:
    party = await make_party(client)
    async with _sessionmaker(client)() as session:
        with pytest.raises(SigningKeyRefused) as refused:
            await signing_key(session, party_id=party.party_id, kid="nope", at=datetime.now(UTC))
    assert refused.value.reason == "unknown"


async def test_revocation_through_the_api_invalidates_the_cached_key(client: TestClient[Any, Any]) -> None:
    party = await make_party(client, kind="authority")
    operator = await make_party(client, kind="operator")
    async with _sessionmaker(client)() as session:
        await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=datetime.now(UTC))

    response = await client.delete(
        f"/v1/parties/{party.party_id}/keys/{party.signing_kid}",
        json={"reason": "rotated out"},
        headers=await bearer(client, operator),
    )
    assert response.status == 200

    async with _sessionmaker(client)() as session:
        with pytest.raises(SigningKeyRefused) as refused:
            await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=datetime.now(UTC))
    assert refused.value.reason == "revoked"


async def test_revocation_by_another_process_is_seen_after_the_ttl(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    party = await make_party(client)
    now = datetime.now(UTC)
    async with _sessionmaker(client)() as session:
        await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=now)
    async with _sessionmaker(client).begin() as session:
        await session.execute(
            update(PartyKey).where(PartyKey.party_id == party.party_id).values(revoked_at=now)
        )
    async with _sessionmaker(client)() as session:
        # Still trusted from the cache: no local revocation signal.
        await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=now)
        monkeypatch.setattr(party_keys, "KEY_CACHE_TTL_SECONDS", -1.0)
        with pytest.raises(SigningKeyRefused):
            await signing_key(session, party_id=party.party_id, kid=party.signing_kid, at=now)


async def test_validity_window_is_enforced(client: TestClient[Any, Any]) -> None:
    party = await make_party(client)
    now = datetime.now(UTC)
    async with _sessionmaker(client).begin() as session:
        key = await add_key(
            session,
            party_id=party.party_id,
            jwk=public_jwk(new_key()),
            not_before=now + timedelta(hours=1),
            not_after=now + timedelta(days=1),
            actor=Actor(),
        )
    async with _sessionmaker(client)() as session:
        with pytest.raises(SigningKeyRefused) as early:
            await signing_key(session, party_id=party.party_id, kid=key.kid, at=now)
        valid = await signing_key(session, party_id=party.party_id, kid=key.kid, at=now + timedelta(hours=2))
        with pytest.raises(SigningKeyRefused) as late:
            await signing_key(session, party_id=party.party_id, kid=key.kid, at=now + timedelta(days=2))
    assert early.value.reason == "not_yet_valid"
    assert valid.kid == key.kid
    assert late.value.reason == "expired"
