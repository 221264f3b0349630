"""Inclusion and consistency proofs, assembled from the stored subtree hashes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.sequencer import latest_checkpoint, load_nodes
from referral.audit.tree import consistency_ranges, inclusion_ranges, perfect_cover, range_hash
from referral.core import errors


async def _tree_size(session: AsyncSession) -> int:
    checkpoint = await latest_checkpoint(session)
    return checkpoint.tree_size if checkpoint is not None else 0


async def _hashes(session: AsyncSession, ranges: list[tuple[int, int]]) -> list[bytes]:
    keys = [key for start, end in ranges for key in perfect_cover(start, end)]
    stored = await load_nodes(session, keys)
    return [range_hash(start, end, lambda level, index: stored[(level, index)]) for start, end in ranges]


async def inclusion_proof(session: AsyncSession, *, leaf_index: int, tree_size: int) -> list[bytes]:
    """The audit path of ``leaf_index`` in the tree of ``tree_size`` leaves."""
    current = await _tree_size(session)
    if not 0 < tree_size <= current:
        raise errors.BadRequest(f"tree_size must be between 1 and the latest checkpoint's size {current}")
    if not 0 <= leaf_index < tree_size:
        raise errors.BadRequest("leaf_index must be at least 0 and smaller than tree_size")
    return await _hashes(session, inclusion_ranges(leaf_index, tree_size))


async def consistency_proof(session: AsyncSession, *, first: int, second: int) -> list[bytes]:
    """The proof that the tree of ``second`` leaves extends the tree of ``first`` leaves."""
    current = await _tree_size(session)
    if not 0 < second <= current:
        raise errors.BadRequest(f"second must be between 1 and the latest checkpoint's size {current}")
    if not 0 < first <= second:
        raise errors.BadRequest("first must be at least 1 and at most second")
    return await _hashes(session, consistency_ranges(first, second))
