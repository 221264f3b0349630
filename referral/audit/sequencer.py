"""The audit sequencer: gives committed entries contiguous leaf indexes in batches and signs a checkpoint.

One batch is one transaction: leaves, completed subtree nodes, the dequeued entries and the new checkpoint
commit together or not at all, so a crash leaves the old state or the new one, never a gap or a duplicate
index. On PostgreSQL a transaction-scoped advisory lock makes exactly one process the sequencer of a batch;
on SQLite the database's single writer does the same.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

import structlog
from aiohttp import web
from sqlalchemy import Table, bindparam, delete, insert, select, text, tuple_
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from referral.audit import merkle
from referral.audit.models import AuditCheckpoint, AuditEntry, AuditLeaf, AuditNode, AuditPending
from referral.audit.note import Ed25519NoteSigner, format_checkpoint
from referral.audit.service import entry_document
from referral.audit.tree import Node, NodeKey, append_leaves, edge_root, right_edge
from referral.core.appkeys import service_keys_key, sessionmaker_key, settings_key
from referral.core.background import background_task, pause
from referral.core.canonical import canonical_json
from referral.core.service_keys import ServiceKey
from referral.core.timeutil import utcnow

log = structlog.get_logger("referral.audit.sequencer")

# pg_try_advisory_xact_lock key of the sequencer: "referral" "audit" as two int32s would also do; any
# constant that no other feature uses.
SEQUENCER_LOCK_KEY = 0x7265_6661_7564_6974

_leaves = cast(Table, AuditLeaf.__table__)
_nodes = cast(Table, AuditNode.__table__)
_checkpoints = cast(Table, AuditCheckpoint.__table__)
_pending = cast(Table, AuditPending.__table__)
_entries = cast(Table, AuditEntry.__table__)


class PendingEntry(NamedTuple):
    """The columns of a queued entry, all that ``entry_document`` reads.

    The sequencer hashes hundreds of entries per batch and changes none: ORM objects (identity map, state
    tracking) and even Core rows (attribute access by name) cost more than the hashing itself.
    """

    id: str
    at: datetime
    actor_party: str | None
    actor_client: str | None
    action: str
    subject_type: str
    subject_id: str
    request_id: str | None
    digest: str | None
    visible_to: list[str]


# Core statements, built once. Ordered by the queue's key (the same value as the entry id): the queue's index
# is walked in order, not the whole log's.
_PENDING_ENTRIES = (
    select(*(_entries.c[name] for name in PendingEntry._fields))
    .select_from(_pending)
    .join(_entries, _entries.c.id == _pending.c.entry_id)
    .order_by(_pending.c.entry_id)
)
_TREE_SIZE = select(_checkpoints.c.tree_size).order_by(_checkpoints.c.tree_size.desc()).limit(1)
_INSERT_LEAVES = insert(_leaves)
_INSERT_NODES = insert(_nodes)
_INSERT_CHECKPOINT = insert(_checkpoints)
# SQLite: the entries just given leaves leave the queue, without a parameter per entry.
_DEQUEUE_SEQUENCED = delete(_pending).where(
    _pending.c.entry_id.in_(
        select(_leaves.c.entry_id).where(_leaves.c.leaf_index >= bindparam("first_index")).scalar_subquery()
    )
)
# PostgreSQL: every write of a batch in one statement (one round trip, no per-row parameter processing).
# The queue loses exactly the entries that got a leaf; the data-modifying CTEs all run to completion.
_WRITE_BATCH = text(
    """
WITH sequenced AS (
    INSERT INTO audit_leaves (leaf_index, entry_id, leaf_hash)
    SELECT * FROM unnest(CAST(:leaf_indexes AS bigint[]), CAST(:entry_ids AS varchar[]),
                         CAST(:leaf_hashes AS bytea[]))
    RETURNING entry_id
),
dequeued AS (
    DELETE FROM audit_pending USING sequenced WHERE audit_pending.entry_id = sequenced.entry_id
),
completed AS (
    INSERT INTO audit_nodes (level, index, hash)
    SELECT * FROM unnest(CAST(:node_levels AS smallint[]), CAST(:node_indexes AS bigint[]),
                         CAST(:node_hashes AS bytea[]))
)
INSERT INTO audit_checkpoints (tree_size, root_hash, note, key_id, created_at)
VALUES (:tree_size, :root_hash, :note, :key_id, :created_at)
"""
).bindparams(bindparam("created_at", type_=_checkpoints.c.created_at.type))


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    sequenced: int
    tree_size: int
    root_hash: bytes


def note_signer(key: ServiceKey, origin: str) -> Ed25519NoteSigner:
    """The signed-note signer of checkpoints: the active service key under the log's origin as its name."""
    return Ed25519NoteSigner(origin, key.private_key)


def key_id_hex(signer: Ed25519NoteSigner) -> str:
    """The 4-byte note key id as 8 hex digits."""
    return f"{signer.key_id:08x}"


async def load_nodes(session: AsyncSession, keys: list[NodeKey]) -> dict[NodeKey, bytes]:
    """Stored subtree hashes by (level, index); level 0 are leaf hashes."""
    found: dict[NodeKey, bytes] = {}
    leaf_indexes = sorted({index for level, index in keys if level == 0})
    upper = sorted({(level, index) for level, index in keys if level > 0})
    if leaf_indexes:
        rows = await session.execute(
            select(AuditLeaf.leaf_index, AuditLeaf.leaf_hash).where(AuditLeaf.leaf_index.in_(leaf_indexes))
        )
        found.update({(0, index): leaf_hash for index, leaf_hash in rows})
    if upper:
        node_rows = await session.execute(
            select(AuditNode.level, AuditNode.index, AuditNode.hash).where(
                tuple_(AuditNode.level, AuditNode.index).in_(upper)
            )
        )
        found.update({(level, index): node for level, index, node in node_rows})
    return found


async def latest_checkpoint(session: AsyncSession) -> AuditCheckpoint | None:
    """The newest checkpoint, or ``None`` before the first batch."""
    return (
        await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1))
    ).scalar_one_or_none()


async def latest_tree_size(session: AsyncSession) -> int:
    """The size of the newest checkpoint's tree, 0 before the first batch."""
    return (await session.execute(_TREE_SIZE)).scalar_one_or_none() or 0


def entry_leaf_hash(entry: PendingEntry) -> bytes:
    """The entry's Merkle leaf hash: of the RFC 8785 form of the document the API serves."""
    return merkle.leaf_hash(canonical_json(entry_document(entry)))


async def sequence_batch(
    session: AsyncSession, *, signer: Ed25519NoteSigner, origin: str, batch_size: int
) -> BatchResult | None:
    """Sequence up to ``batch_size`` pending entries and sign a checkpoint, in the caller's transaction.

    Returns ``None`` when another process holds the sequencer lock or nothing is pending.
    """
    postgresql = session.get_bind().dialect.name == "postgresql"
    if postgresql:
        locked = (
            await session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK_KEY})
        ).scalar_one()
        if not locked:
            return None
    rows = await session.execute(_PENDING_ENTRIES.limit(batch_size))
    pending = [PendingEntry._make(row) for row in rows]
    if not pending:
        return None
    size = await latest_tree_size(session)
    edge_keys = right_edge(size)
    stored = await load_nodes(session, edge_keys)
    edge = [Node(level, index, stored[(level, index)]) for level, index in edge_keys]
    leaf_hashes = [entry_leaf_hash(entry) for entry in pending]
    edge, completed = append_leaves(edge, size, leaf_hashes)
    new_size = size + len(pending)
    root = edge_root(edge)
    checkpoint = {
        "tree_size": new_size,
        "root_hash": root,
        "note": signer.sign(format_checkpoint(origin, new_size, root)),
        "key_id": key_id_hex(signer),
        "created_at": utcnow(),
    }
    if postgresql:
        await session.execute(
            _WRITE_BATCH,
            {
                "leaf_indexes": list(range(size, new_size)),
                "entry_ids": [entry.id for entry in pending],
                "leaf_hashes": leaf_hashes,
                "node_levels": [node.level for node in completed],
                "node_indexes": [node.index for node in completed],
                "node_hashes": [node.hash for node in completed],
                **checkpoint,
            },
        )
    else:
        await _write_batch(
            session,
            size=size,
            pending=pending,
            leaf_hashes=leaf_hashes,
            completed=completed,
            checkpoint=checkpoint,
        )
    return BatchResult(sequenced=len(pending), tree_size=new_size, root_hash=root)


async def _write_batch(
    session: AsyncSession,
    *,
    size: int,
    pending: list[PendingEntry],
    leaf_hashes: list[bytes],
    completed: list[Node],
    checkpoint: dict[str, Any],
) -> None:
    """SQLite, which has no data-modifying CTEs: the batch's writes one statement each."""
    await session.execute(
        _INSERT_LEAVES,
        [
            {"leaf_index": size + offset, "entry_id": entry.id, "leaf_hash": leaf_hash}
            for offset, (entry, leaf_hash) in enumerate(zip(pending, leaf_hashes, strict=True))
        ],
    )
    if completed:
        await session.execute(
            _INSERT_NODES,
            [{"level": node.level, "index": node.index, "hash": node.hash} for node in completed],
        )
    await session.execute(_DEQUEUE_SEQUENCED, {"first_index": size})
    await session.execute(_INSERT_CHECKPOINT, checkpoint)


async def sequence_pending(
    sessionmaker: async_sessionmaker[AsyncSession], *, signer: Ed25519NoteSigner, origin: str, batch_size: int
) -> int:
    """Sequence everything pending now, batch by batch; returns how many entries were sequenced."""
    total = 0
    while True:
        async with sessionmaker.begin() as session:
            result = await sequence_batch(session, signer=signer, origin=origin, batch_size=batch_size)
        if result is None:
            return total
        total += result.sequenced
        log.debug("audit_batch_sequenced", entries=result.sequenced, tree_size=result.tree_size)
        if result.sequenced < batch_size:
            # The queue is drained. Going round again at once would chase a busy API with batches of one
            # entry each, a transaction and a signature apiece; the next interval takes them all together.
            return total


async def _run(app: web.Application, stopping: asyncio.Event) -> None:
    settings = app[settings_key]
    interval = settings.audit_batch_interval_ms / 1000
    while not stopping.is_set():
        signer = note_signer(app[service_keys_key].active, settings.audit_origin)
        try:
            await sequence_pending(
                app[sessionmaker_key],
                signer=signer,
                origin=settings.audit_origin,
                batch_size=settings.audit_batch_size,
            )
        except (IntegrityError, OperationalError, DBAPIError, PoolTimeoutError, OSError) as exc:
            # Another sequencer won a race, or the database is away: the batch rolled back; try again later.
            log.warning("audit_sequencing_failed", error=type(exc).__name__)
        await pause(stopping, interval)


sequencer_task = background_task("audit-sequencer", _run)
