"""Access tokens: client-credentials grant with ``private_key_jwt`` (RFC 7523), cached and refreshed early."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from joserfc import jwt

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.client.keys import Credentials

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE = "client_credentials"
# The assertion is used once, right away; the service accepts lifetimes up to its configured maximum.
ASSERTION_LIFETIME_SECONDS = 60
# Refresh when this share of the token's lifetime is left, but never later than this many seconds before.
REFRESH_SHARE = 0.1
REFRESH_MIN_SECONDS = 30.0


def client_assertion(credentials: Credentials, *, audience: str, now: float | None = None) -> str:
    """A signed ``private_key_jwt`` assertion: ``iss`` = ``sub`` = client id, ``aud``, a short ``exp``."""
    issued = int(time.time() if now is None else now)
    key = credentials.client_key
    return jwt.encode(
        {"alg": key.alg, "kid": key.kid, "typ": "JWT"},
        {
            "iss": credentials.client_id,
            "sub": credentials.client_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
            "jti": uuid.uuid4().hex,
        },
        key.key,
        algorithms=list(ALGORITHMS),
        registry=JWS_REGISTRY,
    )


def token_request_body(credentials: Credentials, *, audience: str, scope: str | None = None) -> bytes:
    """The form body of a token request, with a fresh assertion (so every attempt can be sent anew)."""
    form = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(credentials, audience=audience),
    }
    if scope:
        form["scope"] = scope
    return urlencode(form).encode("ascii")


@dataclass(frozen=True)
class AccessToken:
    """A bearer token with the moment (``time.monotonic``) after which it is refreshed."""

    value: str = field(repr=False)
    refresh_at: float
    scope: str | None = None

    @classmethod
    def issued(cls, value: str, *, expires_in: float, scope: str | None = None) -> AccessToken:
        """A token just issued for ``expires_in`` seconds."""
        margin = max(expires_in * REFRESH_SHARE, min(REFRESH_MIN_SECONDS, expires_in / 2))
        return cls(value=value, refresh_at=time.monotonic() + expires_in - margin, scope=scope)


class TokenCache:
    """One current access token shared by concurrent requests; only one of them fetches a new one."""

    def __init__(self, fetch: Callable[[], Awaitable[AccessToken]]) -> None:
        self._fetch = fetch
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        """A token that is not about to expire, fetched when needed."""
        async with self._lock:
            if self._token is None or time.monotonic() >= self._token.refresh_at:
                self._token = await self._fetch()
            return self._token.value

    def invalidate(self, value: str) -> None:
        """Forget ``value`` (refused by the service), unless another request already replaced it."""
        if self._token is not None and self._token.value == value:
            self._token = None
