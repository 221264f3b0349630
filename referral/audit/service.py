"""Appending to the audit log, inside the caller's transaction, and reading entries back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.models import AuditEntry, AuditLeaf, AuditPending
from referral.core.bulk import unnest_insert, unnest_parameters
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, utcnow

# Core inserts on the table (not the ORM unit of work): this runs on every state change. The statements are
# built once, so SQLAlchemy's compiled cache finds them without re-deriving a cache key per request.
_entries = cast(Table, AuditEntry.__table__)
_pending = cast(Table, AuditPending.__table__)
ENTRY_COLUMNS = ("id", "at", "actor_party", "actor_client", "action", "subject_type", "subject_id",
                 "request_id", "digest", "visible_to")  # fmt: skip
_INSERT_ENTRY = insert(_entries).values({name: bindparam(name) for name in ENTRY_COLUMNS})
_QUEUE_ENTRY = insert(_pending).values(entry_id=bindparam("id"))
# PostgreSQL: the entry and its place in the sequencer's queue in one statement (one round trip).
_entry_cte = _INSERT_ENTRY.returning(_entries.c.id).cte("appended")
_INSERT_AND_QUEUE_ENTRY = insert(_pending).from_select(["entry_id"], select(_entry_cte.c.id))


class EntryColumns(Protocol):
    """The columns of an entry: an ``AuditEntry``, or a row read without the ORM (the sequencer)."""

    @property
    def id(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor_party(self) -> str | None: ...
    @property
    def actor_client(self) -> str | None: ...
    @property
    def action(self) -> str: ...
    @property
    def subject_type(self) -> str: ...
    @property
    def subject_id(self) -> str: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def visible_to(self) -> list[str]: ...


def entry_document(entry: EntryColumns) -> dict[str, Any]:
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


def new_entry_row(
    *,
    action: str,
    subject_type: str,
    subject_id: str,
    actor_party: str | None = None,
    actor_client: str | None = None,
    request_id: str | None = None,
    digest: str | None = None,
    visible_to: Iterable[str] = (),
) -> dict[str, Any]:
    """The columns of a new entry, not written yet (hot paths write these rows without ORM objects)."""
    return {
        "id": new_id(),
        "at": utcnow(),
        "actor_party": actor_party,
        "actor_client": actor_client,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "request_id": request_id or None,
        "digest": digest,
        "visible_to": sorted(set(visible_to)),
    }


def new_entry(
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
    """An entry not written yet (for statements that insert it together with other rows)."""
    return AuditEntry(
        **new_entry_row(
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            actor_party=actor_party,
            actor_client=actor_client,
            request_id=request_id,
            digest=digest,
            visible_to=visible_to,
        )
    )


def entry_values(entry: AuditEntry, *, prefix: str = "") -> dict[str, Any]:
    """The entry's column values, as bound parameters named ``prefix + column``."""
    return {prefix + name: getattr(entry, name) for name in ENTRY_COLUMNS}


def queued_entries_ctes(*, prefix: str, where: str | None = None) -> str:
    """PostgreSQL: the CTEs ``{prefix}appended`` and ``{prefix}queued`` that write entries and queue them
    for the sequencer, for statements that write entries together with the change they record (parameters
    from ``queued_entries_parameters``; ``where`` as in ``unnest_insert``)."""
    appended = f"{prefix}appended"
    return (
        f"{appended} AS ({unnest_insert(_entries, prefix=prefix, where=where)} RETURNING id), "  # noqa: S608
        f"{prefix}queued AS (INSERT INTO {_pending.name} (entry_id) SELECT id FROM {appended})"
    )


def queued_entries_parameters(rows: Sequence[dict[str, Any]], *, prefix: str) -> dict[str, list[Any]]:
    """The parameters of ``queued_entries_ctes`` for entries made by ``new_entry_row``."""
    return unnest_parameters(_entries, rows, prefix=prefix)


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
    entry = new_entry(
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        actor_party=actor_party,
        actor_client=actor_client,
        request_id=request_id,
        digest=digest,
        visible_to=visible_to,
    )
    await write_entry(session, entry)
    return entry


async def write_entry(session: AsyncSession, entry: AuditEntry) -> None:
    """Write an entry made by ``new_entry`` and queue it for the sequencer, in the caller's transaction."""
    values = entry_values(entry)
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_INSERT_AND_QUEUE_ENTRY, values)
    else:
        await session.execute(_INSERT_ENTRY, values)
        await session.execute(_QUEUE_ENTRY, {"id": entry.id})


async def append_entries(session: AsyncSession, entries: Sequence[dict[str, Any]]) -> list[AuditEntry]:
    """Append several entries (keyword arguments of ``append_entry`` each) with two statements in all."""
    rows = [new_entry_row(**entry) for entry in entries]
    await write_entry_rows(session, rows)
    return [AuditEntry(**row) for row in rows]


async def write_entry_rows(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write entries made by ``new_entry_row`` and queue them for the sequencer: two statements in all."""
    if rows:
        await session.execute(_INSERT_ENTRY, rows)
        await session.execute(_QUEUE_ENTRY, [{"id": row["id"]} for row in rows])


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
