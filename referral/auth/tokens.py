"""RFC 9068 access tokens: issued by the token endpoint, verified on every authenticated request.

Verification runs on every request, so verified tokens are cached (bounded LRU keyed by the token string,
never beyond their ``exp``). A cached token's client is re-read from the database when this process has
revoked anything since (``referral.parties.revocation``) or after ``access_token_recheck_seconds``; with
several processes, a client disabled elsewhere keeps working here for at most that long.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.auth.principal import SCOPES_BY_KIND, PartyKind, Principal
from referral.config import Settings
from referral.core import errors
from referral.core.ids import new_id
from referral.core.service_keys import ServiceKey, ServiceKeyRing
from referral.parties import revocation
from referral.parties.models import ApiClient, Party

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type, not a secret
# Longer than any token we issue; anything bigger is refused before parsing.
MAX_TOKEN_LENGTH = 4096


class InvalidToken(errors.Unauthorized):
    """A bearer token that is malformed, forged, expired, or whose client is no longer active."""

    slug: ClassVar[str] = "invalid-token"
    title: ClassVar[str] = "Invalid access token"

    def __init__(self, detail: str) -> None:
        quoted = detail.replace('"', "'")
        super().__init__(
            detail,
            headers={
                "WWW-Authenticate": f'Bearer realm="referral", error="invalid_token", '
                f'error_description="{quoted}"'
            },
            error="invalid_token",
        )


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT read without verification: only for tokens this process has just signed."""
    claims: dict[str, Any] = json.loads(jws.extract_compact(token.encode("ascii")).payload)
    return claims


def issuer_of(settings: Settings) -> str:
    """The issuer of access tokens (and their audience): the public base URL without a trailing slash."""
    return settings.public_url.rstrip("/")


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed access token and the claims in it."""

    token: str
    claims: dict[str, Any]


class TokenIssuer:
    """Signs access tokens with the service's active key."""

    def __init__(self, settings: Settings, keys: ServiceKeyRing) -> None:
        self._issuer = issuer_of(settings)
        self._ttl = settings.access_token_ttl_seconds
        self._keys = keys
        self._signing_keys: dict[str, OKPKey] = {}

    def _signing_key(self, key: ServiceKey) -> OKPKey:
        if key.kid not in self._signing_keys:
            self._signing_keys[key.kid] = OKPKey.import_key(dict(key.private_jwk()))
        return self._signing_keys[key.kid]

    def issue(self, *, client_id: str, party_id: str, scopes: frozenset[str]) -> IssuedToken:
        """A signed ``at+jwt`` for the client with exactly ``scopes``."""
        active = self._keys.active
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._issuer,
            "sub": client_id,
            "client_id": client_id,
            "party": party_id,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "exp": now + self._ttl,
            "jti": new_id(),
        }
        header = {"alg": "EdDSA", "typ": ACCESS_TOKEN_TYP, "kid": active.kid}
        token = jwt.encode(
            header, claims, self._signing_key(active), algorithms=ALGORITHMS, registry=JWS_REGISTRY
        )
        return IssuedToken(token=token, claims=claims)


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    expires_at: float
    checked_at: float
    generation: int


class TokenVerifier:
    """Verifies bearer tokens: signature by a service key, ``typ``, issuer, audience, expiry, live client."""

    def __init__(self, settings: Settings, keys: ServiceKeyRing) -> None:
        self._issuer = issuer_of(settings)
        self._leeway = settings.clock_skew_seconds
        self._cache_size = settings.access_token_cache_size
        self._recheck = settings.access_token_recheck_seconds
        self._keys = keys
        self._public_keys: dict[str, OKPKey] = {}
        self._cache: OrderedDict[str, _Verified] = OrderedDict()

    def _public_key(self, kid: object) -> OKPKey:
        if not isinstance(kid, str):
            raise InvalidToken("the access token names no signing key")
        if kid not in self._public_keys:
            key = self._keys.by_kid(kid)
            if key is None:
                raise InvalidToken("the access token was not signed by a key of this service")
            self._public_keys[kid] = OKPKey.import_key(dict(key.public_jwk()))
        return self._public_keys[kid]

    def _verify_signature_and_claims(self, token: str) -> dict[str, Any]:
        try:
            signature = jws.extract_compact(token.encode("ascii"))
            header = signature.headers()
            if str(header.get("typ", "")).lower() not in {
                ACCESS_TOKEN_TYP,
                f"application/{ACCESS_TOKEN_TYP}",
            }:
                raise InvalidToken('the token is not an access token (typ must be "at+jwt")')
            key = self._public_key(header.get("kid"))
            claims = jwt.decode(token, key, algorithms=ALGORITHMS, registry=JWS_REGISTRY).claims
            jwt.JWTClaimsRegistry(
                leeway=self._leeway,
                iss={"essential": True, "value": self._issuer},
                aud={"essential": True, "value": self._issuer},
                exp={"essential": True},
                sub={"essential": True},
                client_id={"essential": True},
                jti={"essential": True},
            ).validate(claims)
        except JoseError as exc:
            raise InvalidToken(f"the access token is not valid: {exc.error}") from exc
        except (UnicodeEncodeError, ValueError) as exc:
            raise InvalidToken("the access token is malformed") from exc
        if claims["sub"] != claims["client_id"] or not isinstance(claims.get("scope", ""), str):
            raise InvalidToken("the access token claims are inconsistent")
        return claims

    async def _principal_from_database(self, session: AsyncSession, claims: dict[str, Any]) -> Principal:
        row = (
            await session.execute(
                select(ApiClient.party_id, ApiClient.disabled_at, Party.kind)
                .join(Party, Party.id == ApiClient.party_id)
                .where(ApiClient.id == claims["client_id"])
            )
        ).first()
        if row is None or row.disabled_at is not None:
            raise InvalidToken("the client of this access token is no longer active")
        kind = PartyKind(row.kind)
        granted = frozenset(str(claims.get("scope", "")).split()) & SCOPES_BY_KIND[kind]
        return Principal(
            party_id=row.party_id,
            party_kind=kind,
            client_id=str(claims["client_id"]),
            scopes=granted,
            token_id=str(claims["jti"]),
        )

    async def principal(self, token: str, sessionmaker: async_sessionmaker[AsyncSession]) -> Principal:
        """The principal of a valid bearer token; ``InvalidToken`` (401) otherwise."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the access token is malformed")
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            if now >= cached.expires_at + self._leeway:
                del self._cache[token]
                raise InvalidToken("the access token has expired")
            if (
                cached.generation == revocation.generation()
                and time.monotonic() - cached.checked_at < self._recheck
            ):
                self._cache.move_to_end(token)
                return cached.principal
            expires_at = cached.expires_at
            claims: dict[str, Any] = {
                "client_id": cached.principal.client_id,
                "jti": cached.principal.token_id,
                "scope": " ".join(sorted(cached.principal.scopes)),
            }
        else:
            claims = self._verify_signature_and_claims(token)
            expires_at = float(claims["exp"])
        generation = revocation.generation()
        try:
            async with sessionmaker() as session:
                principal = await self._principal_from_database(session, claims)
        except InvalidToken:
            self._cache.pop(token, None)
            raise
        if self._cache_size:
            self._cache[token] = _Verified(principal, expires_at, time.monotonic(), generation)
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal
