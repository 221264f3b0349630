"""``POST /oauth/token``: client credentials with private_key_jwt, and everything it must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jwcrypto import jwk, jws, jwt
from sqlalchemy import select

from referral.app import create_app
from referral.audit.models import AuditEntry
from referral.auth.principal import SCOPES_BY_KIND, PartyKind
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.parties.models import UsedClientAssertion
from tests.auth.factories import (
    TestParty,
    bearer,
    client_assertion,
    make_party,
    new_key,
    sign_document,
    token_endpoint,
    token_form,
)

PROBLEM = "application/problem+json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(party: TestParty, audience: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": party.client_id,
        "sub": party.client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return claims


async def _audit(client: TestClient[Any, Any], action: str) -> list[AuditEntry]:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        rows = await session.execute(select(AuditEntry).where(AuditEntry.action == action))
        return list(rows.scalars())


async def _service_jwks(client: TestClient[Any, Any]) -> jwk.JWKSet:
    response = await client.get("/.well-known/jwks.json")
    assert response.status == 200
    return jwk.JWKSet.from_json(await response.text())


@pytest.mark.parametrize("key_type", ["OKP", "EC"])
async def test_client_obtains_an_rfc9068_access_token(client: TestClient[Any, Any], key_type: str) -> None:
    provider = await make_party(client, kind="provider", client_key_type=key_type)
    assertion = client_assertion(provider.client_id, provider.client_key, audience=token_endpoint(client))

    response = await client.post("/oauth/token", data=token_form(assertion))

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert set(body["scope"].split()) == SCOPES_BY_KIND[PartyKind.PROVIDER]
    # Verified independently with jwcrypto against the published service JWKS.
    verified = jwt.JWT(jwt=body["access_token"], key=await _service_jwks(client), algs=["EdDSA"])
    header = json.loads(verified.header)
    claims = json.loads(verified.claims)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"
    assert claims["iss"] == "http://127.0.0.1:8080"
    assert claims["aud"] == "http://127.0.0.1:8080"
    assert claims["sub"] == claims["client_id"] == provider.client_id
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]
    issued = await _audit(client, "token.issued")
    assert [(entry.subject_id, entry.actor_client, entry.visible_to) for entry in issued] == [
        (claims["jti"], provider.client_id, [provider.party_id])
    ]
    assert issued[0].digest == hashlib.sha256(body["access_token"].encode()).hexdigest()


async def test_issuer_is_also_an_accepted_audience(client: TestClient[Any, Any]) -> None:
    authority = await make_party(client, kind="authority")
    assertion = client_assertion(authority.client_id, authority.client_key, audience="http://127.0.0.1:8080")
    response = await client.post("/oauth/token", data=token_form(assertion, client_id=authority.client_id))
    assert response.status == 200


async def test_requested_scope_narrows_the_token(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client, kind="provider")
    assertion = client_assertion(provider.client_id, provider.client_key, audience=token_endpoint(client))
    response = await client.post("/oauth/token", data=token_form(assertion, scope="referrals:read"))
    assert response.status == 200
    assert (await response.json())["scope"] == "referrals:read"


async def test_scope_beyond_the_party_kind_is_refused(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client, kind="provider")
    assertion = client_assertion(provider.client_id, provider.client_key, audience=token_endpoint(client))
    response = await client.post("/oauth/token", data=token_form(assertion, scope="parties:admin"))
    assert response.status == 400
    assert response.content_type == PROBLEM
    assert (await response.json())["error"] == "invalid_scope"


async def test_replayed_assertion_is_refused(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client)
    assertion = client_assertion(provider.client_id, provider.client_key, audience=token_endpoint(client))
    assert (await client.post("/oauth/token", data=token_form(assertion))).status == 200

    replay = await client.post("/oauth/token", data=token_form(assertion))

    assert replay.status == 401
    body = await replay.json()
    assert body["error"] == "invalid_client"
    assert "jti" in body["error_description"]
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        used = (await session.execute(select(UsedClientAssertion))).scalars().all()
    assert [row.client_id for row in used] == [provider.client_id]
    assert len(await _audit(client, "token.issued")) == 1
    refused = await _audit(client, "token.refused")
    assert [(entry.subject_id, entry.visible_to) for entry in refused] == [
        (provider.client_id, [provider.party_id])
    ]


def _hs256_with_public_key(party: TestParty, audience: str) -> str:
    public = party.client_key.export_public(as_dict=True)
    secret = base64.urlsafe_b64decode(public["x"] + "==")
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(party, audience))
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _rs256(party: TestParty, audience: str) -> str:
    rsa = jwk.JWK.generate(kty="RSA", size=2048)
    token = jwt.JWT(header={"alg": "RS256"}, claims=_claims(party, audience))
    token.make_signed_token(rsa)
    return str(token.serialize())


def _signed_by(key: jwk.JWK, party: TestParty, audience: str, header: dict[str, Any] | None = None) -> str:
    token = jwt.JWT(header={"alg": "EdDSA", **(header or {})}, claims=_claims(party, audience))
    token.make_signed_token(key)
    return str(token.serialize())


REFUSALS = {
    "wrong audience": lambda party, aud: client_assertion(
        party.client_id, party.client_key, audience="https://elsewhere.example/oauth/token"
    ),
    "expired": lambda party, aud: client_assertion(
        party.client_id,
        party.client_key,
        audience=aud,
        iat=int(time.time()) - 600,
        exp=int(time.time()) - 300,
    ),
    "iss differs from sub": lambda party, aud: client_assertion(
        party.client_id, party.client_key, audience=aud, iss="someone-else"
    ),
    "alg none": lambda party, aud: _unsigned({"alg": "none"}, _claims(party, aud)) + ".",
    "HS256 keyed with the public key": _hs256_with_public_key,
    "RS256": _rs256,
    "unknown kid": lambda party, aud: client_assertion(
        party.client_id, party.client_key, audience=aud, header={"kid": "no-such-key"}
    ),
    "signed by another key": lambda party, aud: _signed_by(new_key(), party, aud),
    "no jti": lambda party, aud: client_assertion(party.client_id, party.client_key, audience=aud, jti=None),
    "lifetime too long": lambda party, aud: client_assertion(
        party.client_id, party.client_key, audience=aud, lifetime=3600
    ),
    "no exp": lambda party, aud: client_assertion(party.client_id, party.client_key, audience=aud, exp=None),
    "garbage": lambda party, aud: "not.a.jwt",
}


REASONS = {
    "wrong audience": "'aud'",
    "expired": "expired",
    "iss differs from sub": "Issuer and Subject",
    "alg none": "'none' is not allowed",
    "HS256 keyed with the public key": "'HS256' is not allowed",
    "RS256": "'RS256' is not allowed",
    "unknown kid": "unknown key",
    "signed by another key": "signature",
    "no jti": "JWT ID",
    "lifetime too long": "expire within",
    "no exp": "'exp'",
    "garbage": "Invalid JWT",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_bad_assertions_are_refused_and_audited(client: TestClient[Any, Any], case: str) -> None:
    provider = await make_party(client)
    assertion = REFUSALS[case](provider, token_endpoint(client))

    response = await client.post("/oauth/token", data=token_form(assertion))

    assert response.status == 401, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["error"] == "invalid_client"
    assert REASONS[case] in body["error_description"]
    assert body["status"] == 401
    assert "access_token" not in body
    refused = await _audit(client, "token.refused")
    assert len(refused) == 1
    assert refused[0].actor_party is None
    assert not await _audit(client, "token.issued")


async def test_revoked_client_key_is_refused(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client)
    operator = await make_party(client, kind="operator")
    headers = await bearer(client, operator)
    disabled = await client.delete(
        f"/v1/parties/{provider.party_id}/clients/{provider.client_id}",
        json={"reason": "key compromised"},
        headers=headers,
    )
    assert disabled.status == 200
    assertion = client_assertion(provider.client_id, provider.client_key, audience=token_endpoint(client))

    response = await client.post("/oauth/token", data=token_form(assertion))

    assert response.status == 401
    assert "disabled" in (await response.json())["error_description"]


async def test_unknown_client_is_refused(client: TestClient[Any, Any]) -> None:
    stranger = new_key()
    assertion = client_assertion("no-such-client", stranger, audience=token_endpoint(client))
    response = await client.post("/oauth/token", data=token_form(assertion))
    assert response.status == 401
    refused = await _audit(client, "token.refused")
    assert [(entry.subject_id, entry.visible_to) for entry in refused] == [("no-such-client", [])]


async def test_client_id_must_match_the_assertion(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client)
    assertion = client_assertion(provider.client_id, provider.client_key, audience=token_endpoint(client))
    response = await client.post("/oauth/token", data=token_form(assertion, client_id=str(uuid.uuid4())))
    assert response.status == 401


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "client_assertion_type": "x", "client_assertion": "a.b.c"}, None),
        ({"client_assertion_type": "x", "client_assertion": "a.b.c"}, "invalid_request"),
        ({"grant_type": "client_credentials"}, "invalid_request"),
    ],
)
async def test_malformed_token_requests_are_400(
    client: TestClient[Any, Any], form: dict[str, str], error: str | None
) -> None:
    response = await client.post("/oauth/token", data=form)
    assert response.status == 400
    assert response.content_type == PROBLEM
    assert (await response.json())["error"] == (error or "unsupported_grant_type")


async def test_json_token_request_is_refused(client: TestClient[Any, Any]) -> None:
    response = await client.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings.model_copy(update={"login_max_failures": 3}))


async def test_failed_authentications_are_throttled_per_client(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client)
    audience = token_endpoint(client)
    for _ in range(3):
        bad = client_assertion(provider.client_id, provider.client_key, audience="https://wrong.example")
        assert (await client.post("/oauth/token", data=token_form(bad))).status == 401

    good = client_assertion(provider.client_id, provider.client_key, audience=audience)
    throttled = await client.post("/oauth/token", data=token_form(good))

    assert throttled.status == 429
    assert throttled.content_type == PROBLEM
    assert 0 < int(throttled.headers["Retry-After"]) <= 300
    assert len(await _audit(client, "token.refused")) == 3


async def test_failed_authentications_are_throttled_per_address(client: TestClient[Any, Any]) -> None:
    victim = await make_party(client)
    for _ in range(3):
        stranger = client_assertion(str(uuid.uuid4()), new_key(), audience=token_endpoint(client))
        assert (await client.post("/oauth/token", data=token_form(stranger))).status == 401

    good = client_assertion(victim.client_id, victim.client_key, audience=token_endpoint(client))
    assert (await client.post("/oauth/token", data=token_form(good))).status == 429


async def test_authorization_server_metadata(client: TestClient[Any, Any]) -> None:
    response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status == 200
    metadata = await response.json()
    assert metadata["issuer"] == "http://127.0.0.1:8080"
    assert metadata["token_endpoint"] == "http://127.0.0.1:8080/oauth/token"
    assert metadata["jwks_uri"] == "http://127.0.0.1:8080/.well-known/jwks.json"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == ["EdDSA", "ES256"]
    assert "parties:admin" in metadata["scopes_supported"]


async def test_jws_helper_signatures_verify_with_the_registered_key(client: TestClient[Any, Any]) -> None:
    party = await make_party(client, key_type="EC")
    compact = sign_document(party, {"iss": party.party_id})
    checked = jws.JWS()
    checked.deserialize(compact, key=jwk.JWK(**party.signing_key.export_public(as_dict=True)))
    assert json.loads(checked.payload) == {"iss": party.party_id}
