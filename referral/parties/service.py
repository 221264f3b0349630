"""Use cases on parties, their keys and their API clients; the caller owns the transaction (no commits)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.service import append_entry
from referral.core import errors
from referral.core.canonical import canonical_json
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, isoformat_or_none, utcnow
from referral.parties import revocation
from referral.parties.keys import parse_public_jwk
from referral.parties.models import ApiClient, Party, PartyKey


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit log: an API client of a party, or the operator's CLI (all None)."""

    party_id: str | None = None
    client_id: str | None = None
    request_id: str | None = None


CLI_ACTOR = Actor()


@dataclass(frozen=True)
class PartyDetail:
    """A party with its keys and clients."""

    party: Party
    keys: Sequence[PartyKey]
    clients: Sequence[ApiClient]


def _digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


def party_document(party: Party) -> dict[str, Any]:
    """The full party record as served to itself and to operators."""
    return {
        "id": party.id,
        "kind": party.kind,
        "name": party.name,
        "country": party.country,
        "contact": party.contact,
        "created_at": isoformat(party.created_at),
    }


def key_document(key: PartyKey) -> dict[str, Any]:
    """A registered key with its validity and revocation state."""
    return {
        "kid": key.kid,
        "alg": key.alg,
        "jwk": dict(key.jwk),
        "not_before": isoformat(key.not_before),
        "not_after": isoformat_or_none(key.not_after),
        "created_at": isoformat(key.created_at),
        "revoked_at": isoformat_or_none(key.revoked_at),
        "revocation_reason": key.revocation_reason,
    }


def client_document(client: ApiClient) -> dict[str, Any]:
    """An API client as shown to operators and its own party (public key only)."""
    return {
        "client_id": client.id,
        "party_id": client.party_id,
        "name": client.name,
        "kid": client.kid,
        "jwk": dict(client.jwk),
        "created_at": isoformat(client.created_at),
        "disabled_at": isoformat_or_none(client.disabled_at),
        "disabled_reason": client.disabled_reason,
    }


def key_is_current(key: PartyKey, at: datetime) -> bool:
    """Whether the key may sign at ``at``: not revoked and inside its validity window."""
    return key.revoked_at is None and key.not_before <= at and (key.not_after is None or at < key.not_after)


async def create_party(
    session: AsyncSession, *, kind: str, name: str, country: str, contact: str | None, actor: Actor
) -> Party:
    """Register a party."""
    party = Party(id=new_id(), kind=kind, name=name, country=country, contact=contact, created_at=utcnow())
    session.add(party)
    await session.flush()
    await append_entry(
        session,
        action="party.created",
        subject_type="party",
        subject_id=party.id,
        actor_party=actor.party_id,
        actor_client=actor.client_id,
        request_id=actor.request_id,
        digest=_digest(party_document(party)),
        visible_to=[party.id],
    )
    return party


# A party's kind never changes and parties are never deleted, so the kinds of parties seen are kept for the
# life of the process (bounded: the oldest half is dropped when full). Only found parties are remembered.
_KINDS_CACHE_SIZE = 65_536
_kinds: dict[str, str] = {}


def cached_party_kind(party_id: str) -> str | None:
    """The party's kind if this process has looked it up before (a party's kind never changes)."""
    return _kinds.get(party_id)


async def party_kind(session: AsyncSession, *, party_id: str) -> str | None:
    """The kind of the party (``authority``, ``provider``, ...), or ``None`` if there is no such party."""
    kind = _kinds.get(party_id)
    if kind is None:
        kind = (await session.execute(select(Party.kind).where(Party.id == party_id))).scalar_one_or_none()
        if kind is not None:
            if len(_kinds) >= _KINDS_CACHE_SIZE:
                for stale in list(_kinds)[: _KINDS_CACHE_SIZE // 2]:
                    del _kinds[stale]
            _kinds[party_id] = kind
    return kind


async def get_party(session: AsyncSession, *, party_id: str) -> Party | None:
    """The party with this id."""
    return await session.get(Party, party_id)


async def require_party(session: AsyncSession, *, party_id: str) -> Party:
    """The party with this id, or 404."""
    party = await get_party(session, party_id=party_id)
    if party is None:
        raise errors.NotFound(f"no party {party_id}")
    return party


async def list_parties(session: AsyncSession) -> list[tuple[Party, list[PartyKey]]]:
    """Every party with its keys, by name: the directory."""
    parties = (await session.execute(select(Party).order_by(Party.name, Party.id))).scalars().all()
    keys = (await session.execute(select(PartyKey).order_by(PartyKey.created_at))).scalars().all()
    by_party: dict[str, list[PartyKey]] = {}
    for key in keys:
        by_party.setdefault(key.party_id, []).append(key)
    return [(party, by_party.get(party.id, [])) for party in parties]


async def party_detail(session: AsyncSession, *, party_id: str) -> PartyDetail:
    """A party with its keys and clients, or 404."""
    party = await require_party(session, party_id=party_id)
    keys = (
        (
            await session.execute(
                select(PartyKey).where(PartyKey.party_id == party_id).order_by(PartyKey.created_at)
            )
        )
        .scalars()
        .all()
    )
    clients = (
        (
            await session.execute(
                select(ApiClient).where(ApiClient.party_id == party_id).order_by(ApiClient.created_at)
            )
        )
        .scalars()
        .all()
    )
    return PartyDetail(party=party, keys=keys, clients=clients)


async def current_keys(session: AsyncSession, *, party_id: str, at: datetime) -> list[PartyKey]:
    """The party's keys that may sign at ``at`` (its published JWKS), or 404 for an unknown party."""
    await require_party(session, party_id=party_id)
    keys = (
        (
            await session.execute(
                select(PartyKey).where(PartyKey.party_id == party_id).order_by(PartyKey.created_at)
            )
        )
        .scalars()
        .all()
    )
    return [key for key in keys if key_is_current(key, at)]


async def add_key(
    session: AsyncSession,
    *,
    party_id: str,
    jwk: object,
    not_before: datetime | None,
    not_after: datetime | None,
    actor: Actor,
) -> PartyKey:
    """Register a public signing key; its ``kid`` must be new for the party (revoked kids stay taken)."""
    await require_party(session, party_id=party_id)
    parsed = parse_public_jwk(jwk)
    now = utcnow()
    valid_from = not_before or now
    if not_after is not None and not_after <= valid_from:
        raise errors.ValidationFailed(
            "not_after must be later than not_before",
            errors=[{"loc": ["not_after"], "msg": "must be later than not_before", "type": "value_error"}],
        )
    if await session.get(PartyKey, (party_id, parsed.kid)) is not None:
        raise errors.Conflict(f"the party already has a key {parsed.kid!r}", kid=parsed.kid)
    key = PartyKey(
        party_id=party_id,
        kid=parsed.kid,
        alg=parsed.alg,
        jwk=parsed.public_jwk,
        not_before=valid_from,
        not_after=not_after,
        created_at=now,
        revoked_at=None,
        revocation_reason=None,
    )
    session.add(key)
    await session.flush()
    await append_entry(
        session,
        action="party_key.added",
        subject_type="party_key",
        subject_id=f"{party_id}:{parsed.kid}",
        actor_party=actor.party_id,
        actor_client=actor.client_id,
        request_id=actor.request_id,
        digest=_digest(parsed.public_jwk),
        visible_to=[party_id],
    )
    return key


async def revoke_key(
    session: AsyncSession, *, party_id: str, kid: str, reason: str, actor: Actor
) -> PartyKey:
    """Revoke a key for good; documents signed with it are refused from now on."""
    await require_party(session, party_id=party_id)
    key = await session.get(PartyKey, (party_id, kid))
    if key is None:
        raise errors.NotFound(f"the party has no key {kid!r}")
    if key.revoked_at is not None:
        raise errors.Conflict(f"the key {kid!r} was already revoked", kid=kid)
    key.revoked_at = utcnow()
    key.revocation_reason = reason
    await session.flush()
    await append_entry(
        session,
        action="party_key.revoked",
        subject_type="party_key",
        subject_id=f"{party_id}:{kid}",
        actor_party=actor.party_id,
        actor_client=actor.client_id,
        request_id=actor.request_id,
        digest=_digest({"jwk": dict(key.jwk), "revoked_at": isoformat(key.revoked_at), "reason": reason}),
        visible_to=[party_id],
    )
    revocation.bump_after_commit(session)
    return key


async def add_client(
    session: AsyncSession, *, party_id: str, jwk: object, name: str | None, actor: Actor
) -> ApiClient:
    """Register an API client of the party with its own public key for ``private_key_jwt``."""
    await require_party(session, party_id=party_id)
    parsed = parse_public_jwk(jwk)
    client = ApiClient(
        id=new_id(),
        party_id=party_id,
        name=name,
        kid=parsed.kid,
        alg=parsed.alg,
        jwk=parsed.public_jwk,
        created_at=utcnow(),
        disabled_at=None,
        disabled_reason=None,
    )
    session.add(client)
    await session.flush()
    await append_entry(
        session,
        action="client.added",
        subject_type="client",
        subject_id=client.id,
        actor_party=actor.party_id,
        actor_client=actor.client_id,
        request_id=actor.request_id,
        digest=_digest(parsed.public_jwk),
        visible_to=[party_id],
    )
    return client


async def disable_client(
    session: AsyncSession, *, party_id: str, client_id: str, reason: str, actor: Actor
) -> ApiClient:
    """Disable a client (revoking its key): no new tokens, and its outstanding tokens stop working."""
    client = await session.get(ApiClient, client_id)
    if client is None or client.party_id != party_id:
        raise errors.NotFound(f"the party has no client {client_id}")
    if client.disabled_at is not None:
        raise errors.Conflict(f"the client {client_id} is already disabled")
    client.disabled_at = utcnow()
    client.disabled_reason = reason
    await session.flush()
    await append_entry(
        session,
        action="client.disabled",
        subject_type="client",
        subject_id=client_id,
        actor_party=actor.party_id,
        actor_client=actor.client_id,
        request_id=actor.request_id,
        digest=_digest(
            {"jwk": dict(client.jwk), "disabled_at": isoformat(client.disabled_at), "reason": reason}
        ),
        visible_to=[party_id],
    )
    revocation.bump_after_commit(session)
    return client


async def operator_exists(session: AsyncSession) -> bool:
    """Whether any operator party is registered."""
    found = await session.execute(select(Party.id).where(Party.kind == "operator").limit(1))
    return found.first() is not None
