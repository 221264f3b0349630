"""Tenancy: a party sees only its own objects; anything else answers 404, never revealing that it exists."""

from __future__ import annotations

from collections.abc import Iterable

from referral.auth.principal import Principal
from referral.core import errors

ADMIN_SCOPE = "parties:admin"


def ensure_visible(
    principal: Principal,
    owners: Iterable[str],
    *,
    what: str = "resource",
    operators_see_all: bool = False,
) -> None:
    """404 unless the caller's party is one of ``owners`` (or, if allowed, the caller administers parties)."""
    if principal.party_id in set(owners):
        return
    if operators_see_all and ADMIN_SCOPE in principal.scopes:
        return
    raise errors.NotFound(f"no such {what}")
