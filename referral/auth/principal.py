"""Who is calling: the authenticated principal of a request, and the scope and tenancy checks on it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from referral.core import errors


class PartyKind(StrEnum):
    """The kinds of party (DESIGN.md §3)."""

    AUTHORITY = "authority"
    PROVIDER = "provider"
    OBSERVER = "observer"
    OPERATOR = "operator"


SCOPES_BY_KIND: dict[PartyKind, frozenset[str]] = {
    PartyKind.AUTHORITY: frozenset({"referrals:write", "referrals:read", "audit:read", "stats:read"}),
    PartyKind.PROVIDER: frozenset({"referrals:read", "statuses:write", "audit:read", "stats:read"}),
    PartyKind.OBSERVER: frozenset({"stats:read"}),
    PartyKind.OPERATOR: frozenset({"parties:admin", "audit:read", "stats:read"}),
}


@dataclass(frozen=True)
class Principal:
    """The party and API client an access token was issued to, with the scopes it grants."""

    party_id: str
    party_kind: PartyKind
    client_id: str
    scopes: frozenset[str]
    token_id: str


principal_key = web.RequestKey("principal", Principal)


def authenticated(request: web.Request) -> Principal:
    """The caller's principal; 401 when the request carries no valid access token."""
    principal: Principal | None = request.get(principal_key)
    if principal is None:
        raise errors.Unauthorized(
            "a valid bearer access token is required",
            headers={"WWW-Authenticate": 'Bearer realm="referral"'},
        )
    return principal


def require_scope(request: web.Request, scope: str) -> Principal:
    """The caller's principal if its token grants ``scope``; 401 without a token, 403 without the scope."""
    principal = authenticated(request)
    if scope not in principal.scopes:
        raise errors.Forbidden(
            f"this operation needs the scope {scope!r}",
            headers={
                "WWW-Authenticate": f'Bearer realm="referral", error="insufficient_scope", scope="{scope}"'
            },
            error="insufficient_scope",
            required_scope=scope,
        )
    return principal
