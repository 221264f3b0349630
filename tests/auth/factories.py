"""Test factories for parties, keys, API clients and access tokens, with keys made by jwcrypto.

jwcrypto is independent of the code under test (joserfc/authlib), so a passing test means two JOSE
implementations agree. Reuse from any test::

    from tests.auth.factories import make_party, access_token, bearer

    provider = await make_party(client, kind="provider")
    headers = await bearer(client, provider)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient
from jwcrypto import jwk, jws, jwt

from referral.core.appkeys import sessionmaker_key, settings_key
from referral.parties import service
from referral.parties.service import Actor

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_key(kty: str = "OKP") -> jwk.JWK:
    """A fresh private key: Ed25519 (``OKP``) or P-256 (``EC``)."""
    if kty == "OKP":
        return jwk.JWK.generate(kty="OKP", crv="Ed25519")
    return jwk.JWK.generate(kty="EC", crv="P-256")


def alg_of(key: jwk.JWK) -> str:
    """The JWS algorithm for a key."""
    return "EdDSA" if key.get("kty") == "OKP" else "ES256"


def public_jwk(key: jwk.JWK, **members: Any) -> dict[str, Any]:
    """The public JWK of a key as a dict, with extra members (e.g. ``kid``)."""
    return {**key.export_public(as_dict=True), **members}


@dataclass(frozen=True)
class TestParty:
    """A party with one signing key and one API client, and the private halves of both (jwcrypto)."""

    __test__ = False

    party_id: str
    kind: str
    name: str
    signing_key: jwk.JWK
    signing_kid: str
    client_id: str
    client_key: jwk.JWK


async def make_party(
    client: TestClient[Any, Any],
    *,
    kind: str = "provider",
    name: str | None = None,
    country: str = "DE",
    key_type: str = "OKP",
    client_key_type: str = "OKP",
) -> TestParty:
    """Create a party with a registered signing key and an API client directly in the app's database."""
    app = client.server.app
    assert app is not None
    signing_key, client_key = new_key(key_type), new_key(client_key_type)
    async with app[sessionmaker_key].begin() as session:
        party = await service.create_party(
            session,
            kind=kind,
            name=name or f"{kind} {uuid.uuid4().hex[:8]}",
            country=country,
            contact=f"{kind}@example.org",
            actor=Actor(),
        )
        key = await service.add_key(
            session,
            party_id=party.id,
            jwk=public_jwk(signing_key),
            not_before=None,
            not_after=None,
            actor=Actor(),
        )
        api_client = await service.add_client(
            session, party_id=party.id, jwk=public_jwk(client_key), name="test client", actor=Actor()
        )
    return TestParty(
        party_id=party.id,
        kind=kind,
        name=party.name,
        signing_key=signing_key,
        signing_kid=key.kid,
        client_id=api_client.id,
        client_key=client_key,
    )


def token_endpoint(client: TestClient[Any, Any]) -> str:
    """The token endpoint URL as configured (the audience of client assertions)."""
    app = client.server.app
    assert app is not None
    return app[settings_key].public_url.rstrip("/") + "/oauth/token"


def client_assertion(
    client_id: str,
    key: jwk.JWK,
    *,
    audience: str,
    header: dict[str, Any] | None = None,
    lifetime: int = 60,
    **claims: Any,
) -> str:
    """A ``private_key_jwt`` client assertion signed by jwcrypto; ``claims`` override or add (None drops)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    protected = {"alg": alg_of(key), "typ": "JWT", **(header or {})}
    token = jwt.JWT(header=protected, claims=payload)
    token.make_signed_token(key)
    return str(token.serialize())


def token_form(assertion: str, *, scope: str | None = None, **extra: str) -> dict[str, str]:
    """The form body of a client-credentials token request."""
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }
    if scope is not None:
        form["scope"] = scope
    return form


async def access_token(client: TestClient[Any, Any], party: TestParty, *, scope: str | None = None) -> str:
    """An access token for the party's API client, obtained through the real ``POST /oauth/token``."""
    assertion = client_assertion(party.client_id, party.client_key, audience=token_endpoint(client))
    response = await client.post("/oauth/token", data=token_form(assertion, scope=scope))
    body = await response.json()
    assert response.status == 200, body
    return str(body["access_token"])


async def bearer(
    client: TestClient[Any, Any], party: TestParty, *, scope: str | None = None
) -> dict[str, str]:
    """``Authorization`` headers carrying a fresh access token of the party."""
    return {"Authorization": f"Bearer {await access_token(client, party, scope=scope)}"}


def sign_document(party: TestParty, claims: dict[str, Any], *, typ: str = "referral+jws") -> str:
    """A compact JWS of ``claims`` signed with the party's registered signing key (for signed documents)."""
    signature = jws.JWS(json.dumps(claims).encode())
    signature.add_signature(
        party.signing_key,
        alg=None,
        protected={"alg": alg_of(party.signing_key), "kid": party.signing_kid, "typ": typ},
    )
    return str(signature.serialize(compact=True))
