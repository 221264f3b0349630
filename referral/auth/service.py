"""Database side of the token endpoint: load the claimed client, record assertion ids, audit the outcome."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.service import append_entry
from referral.auth.principal import PartyKind
from referral.auth.server import TokenClient
from referral.auth.tokens import unverified_claims
from referral.parties.keys import parse_public_jwk
from referral.parties.models import ApiClient, Party, UsedClientAssertion


async def load_token_client(session: AsyncSession, *, client_id: str | None) -> TokenClient | None:
    """The client a token request claims to be, with its party kind and parsed public key."""
    if not client_id:
        return None
    row = (
        await session.execute(
            select(ApiClient, Party.kind)
            .join(Party, Party.id == ApiClient.party_id)
            .where(ApiClient.id == client_id)
        )
    ).first()
    if row is None:
        return None
    client, kind = row
    return TokenClient(
        client_id=client.id,
        party_id=client.party_id,
        party_kind=PartyKind(kind),
        kid=client.kid,
        key=parse_public_jwk(client.jwk).key,
        disabled=client.disabled_at is not None,
    )


async def record_assertion(
    session: AsyncSession, *, client_id: str, jti: str, exp: float, leeway: int
) -> bool:
    """Remember an assertion's ``jti`` until it expires; False when it was seen before (a replay)."""
    now = datetime.now(UTC)
    await session.execute(
        delete(UsedClientAssertion).where(
            UsedClientAssertion.client_id == client_id, UsedClientAssertion.expires_at < now
        )
    )
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(UsedClientAssertion)
        .values(
            client_id=client_id,
            jti=jti,
            expires_at=datetime.fromtimestamp(exp, UTC) + timedelta(seconds=leeway),
        )
        .on_conflict_do_nothing()
        .returning(UsedClientAssertion.jti)
    )
    inserted = (await session.execute(statement)).first()
    return inserted is not None


async def audit_token_issued(
    session: AsyncSession, *, client: TokenClient, token: str, request_id: str
) -> None:
    """Audit an issued access token by its ``jti`` and SHA-256 (never the token itself)."""
    await append_entry(
        session,
        action="token.issued",
        subject_type="access_token",
        subject_id=str(unverified_claims(token)["jti"]),
        actor_party=client.party_id,
        actor_client=client.client_id,
        request_id=request_id,
        digest=hashlib.sha256(token.encode()).hexdigest(),
        visible_to=[client.party_id],
    )


async def audit_authentication_refused(
    session: AsyncSession,
    *,
    claimed_client_id: str | None,
    client: TokenClient | None,
    assertion: str | None,
    request_id: str,
) -> None:
    """Audit a refused client authentication; the claimed client's party may see it."""
    await append_entry(
        session,
        action="token.refused",
        subject_type="client",
        subject_id=(claimed_client_id or "unknown")[:128],
        request_id=request_id,
        digest=hashlib.sha256(assertion.encode()).hexdigest() if assertion else None,
        visible_to=[client.party_id] if client else [],
    )
