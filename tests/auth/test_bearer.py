"""The resource side: bearer-token validation, scopes per route, and tenancy (404 for other parties)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jwcrypto import jwk, jwt
from sqlalchemy import update

from referral.auth.state import auth_state_key
from referral.core.appkeys import service_keys_key, sessionmaker_key
from referral.parties.models import ApiClient
from tests.auth.factories import access_token, bearer, make_party, new_key

ISSUER = "http://127.0.0.1:8080"


def _service_key(client: TestClient[Any, Any]) -> jwk.JWK:
    app = client.server.app
    assert app is not None
    return jwk.JWK(**app[service_keys_key].active.private_jwk())


def _token(key: jwk.JWK, client_id: str, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": ISSUER,
        "sub": client_id,
        "client_id": client_id,
        "scope": "referrals:read",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    token = jwt.JWT(
        header={"alg": "EdDSA", "typ": "at+jwt", "kid": key.get("kid") or key.thumbprint(), **(header or {})},
        claims=payload,
    )
    token.make_signed_token(key)
    return str(token.serialize())


async def test_request_without_token_is_401_with_www_authenticate(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/parties")
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_valid_token_is_accepted_and_cached_token_still_works(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client)
    headers = await bearer(client, provider)
    for _ in range(3):
        response = await client.get("/v1/parties", headers=headers)
        assert response.status == 200


async def test_self_signed_token_with_the_service_key_is_accepted(client: TestClient[Any, Any]) -> None:
    # The control for the refusals below: the same construction, only valid.
    provider = await make_party(client)
    token = _token(_service_key(client), provider.client_id)
    response = await client.get("/v1/parties", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge_hs256(client: TestClient[Any, Any], client_id: str) -> str:
    public = _service_key(client).export_public(as_dict=True)
    now = int(time.time())
    header = {"alg": "HS256", "typ": "at+jwt", "kid": public["kid"]}
    claims = {
        "iss": ISSUER,
        "aud": ISSUER,
        "sub": client_id,
        "client_id": client_id,
        "exp": now + 300,
        "jti": "x",
        "scope": "referrals:read",
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    secret = base64.urlsafe_b64decode(public["x"] + "==")
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _alg_none(client_id: str) -> str:
    now = int(time.time())
    header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    claims = _b64(
        json.dumps(
            {
                "iss": ISSUER,
                "aud": ISSUER,
                "sub": client_id,
                "client_id": client_id,
                "exp": now + 300,
                "jti": "x",
            }
        ).encode()
    )
    return f"{header}.{claims}."


BAD_TOKENS = {
    "without typ at+jwt": lambda c, cid: _token(_service_key(c), cid, header={"typ": "JWT"}),
    "from another issuer": lambda c, cid: _token(_service_key(c), cid, iss="https://other.example"),
    "signed by a foreign key": lambda c, cid: _token(new_key(), cid, header={"kid": "foreign"}),
    "foreign key claiming our kid": lambda c, cid: _token(
        new_key(), cid, header={"kid": _service_key(c)["kid"]}
    ),
    "expired": lambda c, cid: _token(
        _service_key(c), cid, iat=int(time.time()) - 1000, exp=int(time.time()) - 600
    ),
    "wrong audience": lambda c, cid: _token(_service_key(c), cid, aud="https://other.example"),
    "alg none": lambda c, cid: _alg_none(cid),
    "HS256 keyed with the public key": _forge_hs256,
    "unknown client": lambda c, cid: _token(_service_key(c), "no-such-client"),
    "garbage": lambda c, cid: "garbage",
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_401_invalid_token(client: TestClient[Any, Any], case: str) -> None:
    provider = await make_party(client)
    token = BAD_TOKENS[case](client, provider.client_id)

    response = await client.get("/v1/parties", headers={"Authorization": f"Bearer {token}"})

    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert (await response.json())["error"] == "invalid_token"


async def test_non_bearer_scheme_is_401(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/parties", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status == 401


async def test_public_paths_ignore_credentials(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz", headers={"Authorization": "Bearer garbage"})
    assert response.status == 200
    jwks = await client.get("/.well-known/jwks.json", headers={"Authorization": "Bearer garbage"})
    assert jwks.status == 200


async def test_disabled_client_token_stops_working_at_once(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client)
    operator = await make_party(client, kind="operator")
    provider_headers = await bearer(client, provider)
    assert (await client.get("/v1/parties", headers=provider_headers)).status == 200

    disabled = await client.delete(
        f"/v1/parties/{provider.party_id}/clients/{provider.client_id}",
        json={"reason": "decommissioned"},
        headers=await bearer(client, operator),
    )
    assert disabled.status == 200

    response = await client.get("/v1/parties", headers=provider_headers)
    assert response.status == 401
    assert "no longer active" in (await response.json())["detail"]


async def test_client_disabled_by_another_process_is_seen_after_the_recheck_interval(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = await make_party(client)
    headers = await bearer(client, provider)
    assert (await client.get("/v1/parties", headers=headers)).status == 200
    app = client.server.app
    assert app is not None
    # Another process (the CLI) disables the client: no in-process revocation signal reaches us.
    async with app[sessionmaker_key].begin() as session:
        await session.execute(
            update(ApiClient)
            .where(ApiClient.id == provider.client_id)
            .values(disabled_at=ApiClient.created_at)
        )
    assert (await client.get("/v1/parties", headers=headers)).status == 200  # cached, within the interval
    monkeypatch.setattr(app[auth_state_key].verifier, "_recheck", 0.0)
    assert (await client.get("/v1/parties", headers=headers)).status == 401


async def test_provider_token_on_operator_route_is_403_insufficient_scope(
    client: TestClient[Any, Any],
) -> None:
    provider = await make_party(client, kind="provider")
    response = await client.post(
        "/v1/parties",
        json={"kind": "provider", "name": "X", "country": "DE"},
        headers=await bearer(client, provider),
    )
    assert response.status == 403
    assert response.content_type == "application/problem+json"
    assert (await response.json())["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_narrowed_token_lacks_the_other_scopes(client: TestClient[Any, Any]) -> None:
    operator = await make_party(client, kind="operator")
    token = await access_token(client, operator, scope="stats:read")
    response = await client.post(
        "/v1/parties",
        json={"kind": "provider", "name": "X", "country": "DE"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 403


async def test_party_reading_another_partys_record_gets_404(client: TestClient[Any, Any]) -> None:
    provider = await make_party(client, kind="provider")
    authority = await make_party(client, kind="authority")
    headers = await bearer(client, provider)

    other = await client.get(f"/v1/parties/{authority.party_id}", headers=headers)
    own = await client.get(f"/v1/parties/{provider.party_id}", headers=headers)
    missing = await client.get(f"/v1/parties/{uuid.uuid4()}", headers=headers)

    assert other.status == 404
    assert own.status == 200
    # Someone else's record and a record that does not exist are indistinguishable.
    other_body, missing_body = await other.json(), await missing.json()
    assert other_body["title"] == missing_body["title"]
    assert other_body["detail"] == missing_body["detail"]
