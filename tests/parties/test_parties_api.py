"""``/v1/parties``: directory, party records, key registration and revocation, API clients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jwcrypto import jwk
from sqlalchemy import func, select

from referral.audit.models import AuditEntry
from referral.core.appkeys import sessionmaker_key
from referral.parties.models import Party, PartyKey
from tests.auth.factories import (
    TestParty,
    bearer,
    client_assertion,
    make_party,
    new_key,
    public_jwk,
    token_endpoint,
    token_form,
)


async def _audit(client: TestClient[Any, Any], action: str) -> list[AuditEntry]:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        return list((await session.execute(select(AuditEntry).where(AuditEntry.action == action))).scalars())


async def _count(client: TestClient[Any, Any], model: Any) -> int:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


@pytest.fixture
async def operator(client: TestClient[Any, Any]) -> TestParty:
    return await make_party(client, kind="operator", name="Operator")


async def test_operator_registers_a_party(client: TestClient[Any, Any], operator: TestParty) -> None:
    headers = await bearer(client, operator)
    response = await client.post(
        "/v1/parties",
        json={"kind": "authority", "name": "Europol IRU", "country": "NL", "contact": "iru@example.org"},
        headers=headers,
    )
    assert response.status == 201
    party = await response.json()
    assert response.headers["Location"] == f"/v1/parties/{party['id']}"
    assert party["kind"] == "authority"
    assert party["country"] == "NL"
    assert party["keys"] == party["clients"] == []
    created = [entry for entry in await _audit(client, "party.created") if entry.subject_id == party["id"]]
    assert len(created) == 1
    assert created[0].actor_party == operator.party_id
    assert created[0].actor_client == operator.client_id
    assert created[0].request_id == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "authority", "name": "X", "country": "XX"}, "country"),
        ({"kind": "authority", "name": "X", "country": "de"}, "country"),
        ({"kind": "judge", "name": "X", "country": "DE"}, "kind"),
        ({"kind": "authority", "name": "  ", "country": "DE"}, "name"),
        ({"kind": "authority", "country": "DE"}, "name"),
        ({"kind": "authority", "name": "X", "country": "DE", "extra": 1}, "extra"),
    ],
)
async def test_invalid_party_is_422_and_nothing_is_written(
    client: TestClient[Any, Any], operator: TestParty, body: dict[str, Any], field: str
) -> None:
    headers = await bearer(client, operator)
    before = await _count(client, Party)
    response = await client.post("/v1/parties", json=body, headers=headers)
    assert response.status == 422
    problem = await response.json()
    assert [error["loc"][0] for error in problem["errors"]] == [field]
    assert await _count(client, Party) == before


async def test_directory_is_readable_by_every_party_and_hides_private_fields(
    client: TestClient[Any, Any],
) -> None:
    provider = await make_party(client, kind="provider", name="Provider A")
    observer = await make_party(client, kind="observer", name="Observer B")

    response = await client.get("/v1/parties", headers=await bearer(client, observer))

    assert response.status == 200
    items = (await response.json())["items"]
    assert [item["name"] for item in items] == ["Observer B", "Provider A"]
    entry = next(item for item in items if item["id"] == provider.party_id)
    assert set(entry) == {"id", "kind", "name", "country", "keys"}
    assert [key["kid"] for key in entry["keys"]] == [provider.signing_kid]
    assert entry["keys"][0]["current"] is True


async def test_party_record_is_visible_to_itself_and_operators(
    client: TestClient[Any, Any], operator: TestParty
) -> None:
    provider = await make_party(client)
    for viewer in (provider, operator):
        response = await client.get(f"/v1/parties/{provider.party_id}", headers=await bearer(client, viewer))
        assert response.status == 200
        record = await response.json()
        assert record["contact"] == "provider@example.org"
        assert [c["client_id"] for c in record["clients"]] == [provider.client_id]
        assert "d" not in record["clients"][0]["jwk"]


@pytest.mark.parametrize("kty", ["OKP", "EC"])
async def test_operator_registers_a_key_with_its_thumbprint_as_kid(
    client: TestClient[Any, Any], operator: TestParty, kty: str
) -> None:
    provider = await make_party(client)
    key = new_key(kty)
    response = await client.post(
        f"/v1/parties/{provider.party_id}/keys",
        json={"jwk": public_jwk(key)},
        headers=await bearer(client, operator),
    )
    assert response.status == 201
    registered = await response.json()
    assert registered["kid"] == key.thumbprint()
    assert registered["alg"] == ("EdDSA" if kty == "OKP" else "ES256")
    assert registered["revoked_at"] is None
    added = [e for e in await _audit(client, "party_key.added") if e.subject_id.endswith(key.thumbprint())]
    assert [e.visible_to for e in added] == [[provider.party_id]]
    jwks = await client.get(f"/v1/parties/{provider.party_id}/jwks", headers=await bearer(client, provider))
    assert key.thumbprint() in [k["kid"] for k in (await jwks.json())["keys"]]


@pytest.mark.parametrize(
    ("jwk_document", "message"),
    [
        ({**new_key().export_private(as_dict=True)}, "private key material"),
        (jwk.JWK.generate(kty="RSA", size=2048).export_public(as_dict=True), "only OKP"),
        (jwk.JWK.generate(kty="EC", crv="P-384").export_public(as_dict=True), "P-256"),
        (jwk.JWK.generate(kty="OKP", crv="X25519").export_public(as_dict=True), "Ed25519"),
        ({**new_key().export_public(as_dict=True), "alg": "ES256"}, "alg EdDSA"),
        ({**new_key().export_public(as_dict=True), "use": "enc"}, "signing key"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "valid public key"),
        ({**new_key().export_public(as_dict=True), "kid": "bad kid with spaces"}, "kid"),
    ],
)
async def test_unacceptable_keys_are_refused(
    client: TestClient[Any, Any], operator: TestParty, jwk_document: dict[str, Any], message: str
) -> None:
    provider = await make_party(client)
    before = await _count(client, PartyKey)
    response = await client.post(
        f"/v1/parties/{provider.party_id}/keys",
        json={"jwk": jwk_document},
        headers=await bearer(client, operator),
    )
    assert response.status == 422
    assert message in (await response.json())["detail"]
    assert await _count(client, PartyKey) == before


async def test_duplicate_kid_is_409(client: TestClient[Any, Any], operator: TestParty) -> None:
    provider = await make_party(client)
    response = await client.post(
        f"/v1/parties/{provider.party_id}/keys",
        json={"jwk": public_jwk(new_key(), kid=provider.signing_kid)},
        headers=await bearer(client, operator),
    )
    assert response.status == 409


async def test_key_for_unknown_party_is_404(client: TestClient[Any, Any], operator: TestParty) -> None:
    response = await client.post(
        "/v1/parties/00000000-0000-7000-8000-000000000000/keys",
        json={"jwk": public_jwk(new_key())},
        headers=await bearer(client, operator),
    )
    assert response.status == 404


async def test_revoked_key_leaves_the_jwks_and_stays_taken(
    client: TestClient[Any, Any], operator: TestParty
) -> None:
    provider = await make_party(client)
    headers = await bearer(client, operator)
    url = f"/v1/parties/{provider.party_id}/keys/{provider.signing_kid}"

    revoked = await client.delete(url, json={"reason": "compromised laptop"}, headers=headers)

    assert revoked.status == 200
    body = await revoked.json()
    assert body["revoked_at"] is not None
    assert body["revocation_reason"] == "compromised laptop"
    entries = await _audit(client, "party_key.revoked")
    assert [e.subject_id for e in entries] == [f"{provider.party_id}:{provider.signing_kid}"]
    jwks = await client.get(f"/v1/parties/{provider.party_id}/jwks", headers=headers)
    assert (await jwks.json())["keys"] == []
    again = await client.delete(url, json={"reason": "again"}, headers=headers)
    assert again.status == 409
    reuse = await client.post(
        f"/v1/parties/{provider.party_id}/keys",
        json={"jwk": public_jwk(new_key(), kid=provider.signing_kid)},
        headers=headers,
    )
    assert reuse.status == 409


async def test_revocation_needs_a_reason(client: TestClient[Any, Any], operator: TestParty) -> None:
    provider = await make_party(client)
    response = await client.delete(
        f"/v1/parties/{provider.party_id}/keys/{provider.signing_kid}",
        json={},
        headers=await bearer(client, operator),
    )
    assert response.status == 422


async def test_keys_outside_their_validity_window_are_not_published(
    client: TestClient[Any, Any], operator: TestParty
) -> None:
    provider = await make_party(client)
    headers = await bearer(client, operator)
    future = new_key()
    now = datetime.now(UTC)
    response = await client.post(
        f"/v1/parties/{provider.party_id}/keys",
        json={"jwk": public_jwk(future), "not_before": (now + timedelta(days=1)).isoformat()},
        headers=headers,
    )
    assert response.status == 201
    bad_window = await client.post(
        f"/v1/parties/{provider.party_id}/keys",
        json={
            "jwk": public_jwk(new_key()),
            "not_before": now.isoformat(),
            "not_after": (now - timedelta(days=1)).isoformat(),
        },
        headers=headers,
    )
    assert bad_window.status == 422
    jwks = await client.get(f"/v1/parties/{provider.party_id}/jwks", headers=headers)
    assert [k["kid"] for k in (await jwks.json())["keys"]] == [provider.signing_kid]


async def test_new_api_client_can_authenticate(client: TestClient[Any, Any], operator: TestParty) -> None:
    provider = await make_party(client)
    client_key = new_key("EC")
    response = await client.post(
        f"/v1/parties/{provider.party_id}/clients",
        json={"jwk": public_jwk(client_key), "name": "trust & safety bot"},
        headers=await bearer(client, operator),
    )
    assert response.status == 201
    created = await response.json()
    assert created["party_id"] == provider.party_id
    assert created["name"] == "trust & safety bot"
    assert [e.subject_id for e in await _audit(client, "client.added")][-1] == created["client_id"]

    assertion = client_assertion(created["client_id"], client_key, audience=token_endpoint(client))
    token = await client.post("/oauth/token", data=token_form(assertion))
    assert token.status == 200


async def test_client_with_private_key_is_refused(client: TestClient[Any, Any], operator: TestParty) -> None:
    provider = await make_party(client)
    response = await client.post(
        f"/v1/parties/{provider.party_id}/clients",
        json={"jwk": new_key().export_private(as_dict=True)},
        headers=await bearer(client, operator),
    )
    assert response.status == 422


async def test_admin_routes_need_parties_admin(client: TestClient[Any, Any]) -> None:
    authority = await make_party(client, kind="authority")
    headers = await bearer(client, authority)
    base = f"/v1/parties/{authority.party_id}"
    calls = [
        client.post(f"{base}/keys", json={"jwk": public_jwk(new_key())}, headers=headers),
        client.delete(f"{base}/keys/{authority.signing_kid}", json={"reason": "x"}, headers=headers),
        client.post(f"{base}/clients", json={"jwk": public_jwk(new_key())}, headers=headers),
        client.delete(f"{base}/clients/{authority.client_id}", json={"reason": "x"}, headers=headers),
    ]
    for call in calls:
        response = await call
        assert response.status == 403


async def test_non_json_body_is_415(client: TestClient[Any, Any], operator: TestParty) -> None:
    response = await client.post("/v1/parties", data="kind=provider", headers=await bearer(client, operator))
    assert response.status == 415
