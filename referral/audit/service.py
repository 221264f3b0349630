"""Appending to the audit log, inside the caller's transaction, and reading entries back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.models import AuditEntry, AuditLeaf, AuditPending
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, utcnow

# Core inserts on the table (not the ORM unit of work): this runs on every state change.
_entries = cast(Table, AuditEntry.__table__)
_pending = cast(Table, AuditPending.__table__)


def entry_document(entry: AuditEntry) -> dict[str, Any]:
    """The entry object exactly as served by the API; its RFC 8785 form is the Merkle leaf."""
    return {
        "id": entry.id,
        "at": isoformat(entry.at),
        "actor_party": entry.actor_party,
        "actor_client": entry.actor_client,
        "action": entry.action,
        "subject_type": entry.subject_type,
        "subject_id": entry.subject_id,
        "request_id": entry.request_id,
        "digest": entry.digest,
        "visible_to": list(entry.visible_to),
    }


async def append_entry(
    session: AsyncSession,
    *,
    action: str,
    subject_type: str,
    subject_id: str,
    actor_party: str | None = None,
    actor_client: str | None = None,
    request_id: str | None = None,
    digest: str | None = None,
    visible_to: Iterable[str] = (),
) -> AuditEntry:
    """Append an entry in the caller's transaction; it is sequenced into the Merkle tree after commit."""
    entry = AuditEntry(
        id=new_id(),
        at=utcnow(),
        actor_party=actor_party,
        actor_client=actor_client,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        request_id=request_id or None,
        digest=digest,
        visible_to=sorted(set(visible_to)),
    )
    await session.execute(
        insert(_entries).values(
            id=entry.id,
            at=entry.at,
            actor_party=entry.actor_party,
            actor_client=entry.actor_client,
            action=entry.action,
            subject_type=entry.subject_type,
            subject_id=entry.subject_id,
            request_id=entry.request_id,
            digest=entry.digest,
            visible_to=entry.visible_to,
        )
    )
    await session.execute(insert(_pending).values(entry_id=entry.id))
    return entry


@dataclass(frozen=True)
class SequencedEntry:
    """An entry with its place in the log, when it has one yet."""

    entry: AuditEntry
    leaf_index: int | None
    leaf_hash: bytes | None


async def get_entry(session: AsyncSession, *, entry_id: str) -> SequencedEntry | None:
    """The entry with its leaf index and hash (``None`` for both until sequenced)."""
    row = (
        await session.execute(
            select(AuditEntry, AuditLeaf.leaf_index, AuditLeaf.leaf_hash)
            .outerjoin(AuditLeaf, AuditLeaf.entry_id == AuditEntry.id)
            .where(AuditEntry.id == entry_id)
        )
    ).first()
    if row is None:
        return None
    return SequencedEntry(entry=row[0], leaf_index=row[1], leaf_hash=row[2])
