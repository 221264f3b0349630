"""``referral audit fsck``: re-check the whole log from the database, trusting nothing stored but the entries.

Every leaf hash is recomputed from its entry, every stored subtree node from the leaves, every checkpoint's
root from the same leaf sequence (which also proves consecutive checkpoints consistent with each other) and
every checkpoint's signature against the service's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit import merkle
from referral.audit.models import AuditCheckpoint, AuditEntry, AuditLeaf, AuditNode, AuditPending
from referral.audit.note import Ed25519NoteVerifier, NoteError, parse_checkpoint, verify_note
from referral.audit.sequencer import key_id_hex, note_signer
from referral.audit.service import entry_document
from referral.audit.tree import Node, append_leaves, edge_root
from referral.core.canonical import canonical_json
from referral.core.service_keys import ServiceKeyRing

STREAM_CHUNK = 5000


@dataclass
class FsckReport:
    """What the check found; ``first_bad_index`` is the lowest leaf index involved in a problem."""

    leaves: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad_index: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the log is intact."""
        return not self.problems

    def fail(self, message: str, index: int | None = None) -> None:
        """Record a problem (only the first few hundred are kept)."""
        if len(self.problems) < 200:
            self.problems.append(message)
        if index is not None and (self.first_bad_index is None or index < self.first_bad_index):
            self.first_bad_index = index


def _verifiers(keys: ServiceKeyRing, origin: str) -> dict[str, Ed25519NoteVerifier]:
    verifiers = {}
    for key in keys.keys:
        signer = note_signer(key, origin)
        verifiers[key_id_hex(signer)] = Ed25519NoteVerifier.from_vkey(signer.vkey())
    return verifiers


async def fsck(session: AsyncSession, *, keys: ServiceKeyRing, origin: str) -> FsckReport:
    """Check the audit log in the database and report every inconsistency found."""
    report = FsckReport()
    checkpoints = list(
        (await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size))).scalars()
    )
    report.checkpoints = len(checkpoints)
    by_size = {checkpoint.tree_size: checkpoint for checkpoint in checkpoints}
    stored_nodes = {
        (level, index): node_hash
        for level, index, node_hash in await session.execute(
            select(AuditNode.level, AuditNode.index, AuditNode.hash)
        )
    }
    verifiers = _verifiers(keys, origin)

    edge: list[Node] = []
    expected_index = 0
    stream = await session.stream(
        select(AuditLeaf.leaf_index, AuditLeaf.leaf_hash, AuditEntry)
        .join(AuditEntry, AuditEntry.id == AuditLeaf.entry_id)
        .order_by(AuditLeaf.leaf_index)
        .execution_options(yield_per=STREAM_CHUNK)
    )
    async for leaf_index, stored_leaf_hash, entry in stream:
        if leaf_index != expected_index:
            report.fail(f"leaf indexes jump from {expected_index - 1} to {leaf_index}", expected_index)
            break
        recomputed = merkle.leaf_hash(canonical_json(entry_document(entry)))
        if recomputed != stored_leaf_hash:
            report.fail(
                f"leaf {leaf_index}: entry {entry.id} does not hash to the stored leaf hash", leaf_index
            )
        edge, completed = append_leaves(edge, leaf_index, [recomputed])
        for node in completed:
            if stored_nodes.get((node.level, node.index)) != node.hash:
                # Reported at the leaf that completed the node: where the mismatch first shows.
                report.fail(
                    f"subtree node level {node.level} index {node.index} is wrong or missing", leaf_index
                )
        expected_index += 1
        checkpoint = by_size.get(expected_index)
        if checkpoint is not None:
            _check_checkpoint(report, checkpoint, edge_root(edge), verifiers, origin)
    report.leaves = expected_index

    for checkpoint in checkpoints:
        if checkpoint.tree_size > expected_index:
            report.fail(f"checkpoint of size {checkpoint.tree_size} is beyond the {expected_index} leaves")
    unaccounted = (
        await session.execute(
            select(func.count())
            .select_from(AuditEntry)
            .outerjoin(AuditLeaf, AuditLeaf.entry_id == AuditEntry.id)
            .outerjoin(AuditPending, AuditPending.entry_id == AuditEntry.id)
            .where(AuditLeaf.entry_id.is_(None), AuditPending.entry_id.is_(None))
        )
    ).scalar_one()
    if unaccounted:
        report.fail(f"{unaccounted} entries are neither in the log nor queued for it")
    return report


def _check_checkpoint(
    report: FsckReport,
    checkpoint: AuditCheckpoint,
    root: bytes,
    verifiers: dict[str, Ed25519NoteVerifier],
    origin: str,
) -> None:
    size = checkpoint.tree_size
    if checkpoint.root_hash != root:
        report.fail(f"checkpoint of size {size}: stored root does not match the leaves", size - 1)
    verifier = verifiers.get(checkpoint.key_id)
    if verifier is None:
        report.fail(f"checkpoint of size {size}: signed by unknown key {checkpoint.key_id}", size - 1)
        return
    try:
        signed = parse_checkpoint(verify_note(checkpoint.note, verifier))
    except (NoteError, ValueError) as exc:
        report.fail(f"checkpoint of size {size}: {exc}", size - 1)
        return
    if (signed.origin, signed.size, signed.root_hash) != (origin, size, root):
        report.fail(f"checkpoint of size {size}: signed note does not state this tree", size - 1)
