"""Bearer-token middleware: a valid access token becomes the request's ``Principal``; a bad one is a 401."""

from __future__ import annotations

import structlog
from aiohttp import web

from referral.auth.principal import principal_key
from referral.auth.state import auth_state_key
from referral.auth.tokens import InvalidToken
from referral.core.appkeys import sessionmaker_key
from referral.core.web import Handler

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/oauth/token"})
PUBLIC_PREFIXES = ("/.well-known/",)


def is_public(path: str) -> bool:
    """Whether ``path`` is served without looking at any credentials."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the principal of a bearer token; requests without one pass on anonymously.

    Routes decide what they need with ``authenticated`` / ``require_scope``; a token that is present but
    invalid is refused here, whatever the route.
    """
    if is_public(request.path):
        return await handler(request)
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return await handler(request)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("use an OAuth 2.0 bearer access token: Authorization: Bearer <token>")
    principal = await request.app[auth_state_key].verifier.principal(token, request.app[sessionmaker_key])
    request[principal_key] = principal
    structlog.contextvars.bind_contextvars(actor_party=principal.party_id, actor_client=principal.client_id)
    return await handler(request)
