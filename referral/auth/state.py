"""The per-application authentication state: token issuer and verifier, authlib server, login throttle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from referral.auth.server import TokenServer
from referral.auth.throttle import LoginThrottle
from referral.auth.tokens import TokenIssuer, TokenVerifier, issuer_of
from referral.core.appkeys import service_keys_key, settings_key


@dataclass(frozen=True)
class AuthState:
    """Everything the token endpoint and the bearer-token middleware share within one process."""

    issuer: str
    server: TokenServer
    verifier: TokenVerifier
    throttle: LoginThrottle


auth_state_key = web.AppKey("auth_state_key", AuthState)


async def auth_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` entry that builds the authentication state once the service keys are loaded."""
    settings = app[settings_key]
    keys = app[service_keys_key]
    issuer = issuer_of(settings)
    app[auth_state_key] = AuthState(
        issuer=issuer,
        server=TokenServer(
            issuer=issuer,
            issuer_tokens=TokenIssuer(settings, keys),
            leeway=settings.clock_skew_seconds,
            max_lifetime=settings.client_assertion_max_lifetime_seconds,
        ),
        verifier=TokenVerifier(settings, keys),
        throttle=LoginThrottle(
            max_failures=settings.login_max_failures, window_seconds=settings.login_failure_window_seconds
        ),
    )
    yield
