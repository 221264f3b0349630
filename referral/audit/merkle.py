"""RFC 9162 §2.1 Merkle tree hashing, inclusion and consistency proofs, and a compact right-edge tree."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
# Tree sizes and indices are uint64 in RFC 9162 and in every client we interoperate with.
MAX_TREE_SIZE = 2**64 - 1
EMPTY_ROOT = hashlib.sha256(b"").digest()

# Distinct prefixes for leaves and nodes stop a node from being passed off as a leaf (RFC 9162 §2.1.1).
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A Merkle proof, or the sizes and hashes it was checked against, did not verify."""


def leaf_hash(data: bytes) -> bytes:
    """MTH of a single entry: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class CompactTree:
    """The roots of the perfect subtrees along a tree's right edge: enough to append leaves and get roots."""

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        """An empty tree."""
        self._size = 0
        # Largest (leftmost) subtree first; one entry per set bit of the size, as in transparency-dev compact.
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> CompactTree:
        """Restore a tree from its size and the right-edge hashes that ``to_hashes`` returned."""
        if not 0 <= size <= MAX_TREE_SIZE:
            raise ValueError(f"tree size {size} out of range")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {size.bit_count()} right-edge hashes, got {len(hashes)}"
            )
        for value in hashes:
            _require_hash_size(value, "right-edge hash")
        tree = cls()
        tree._size = size
        tree._hashes = [bytes(value) for value in hashes]
        return tree

    @property
    def size(self) -> int:
        """How many leaves the tree holds."""
        return self._size

    def to_hashes(self) -> list[bytes]:
        """The right-edge subtree roots, largest first, for storage alongside ``size``."""
        return list(self._hashes)

    def copy(self) -> CompactTree:
        """An independent tree in the same state, to try a batch without committing to it."""
        return CompactTree.from_hashes(self._size, self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf (already leaf-hashed) at the right."""
        _require_hash_size(leaf_hash, "leaf hash")
        if self._size == MAX_TREE_SIZE:
            raise ValueError("tree is full")
        merged = bytes(leaf_hash)
        # Each trailing 1 bit of the old size is a perfect subtree of the new leaf's height: fold it in.
        carry = self._size
        while carry & 1:
            merged = node_hash(self._hashes.pop(), merged)
            carry >>= 1
        self._hashes.append(merged)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves (already leaf-hashed) at the right, in order."""
        for value in leaf_hashes:
            self.append(value)

    def root(self) -> bytes:
        """MTH of all leaves so far; EMPTY_ROOT for an empty tree."""
        if not self._hashes:
            return EMPTY_ROOT
        # RFC 9162's split at the largest power of two makes the root a right fold over the right edge.
        merged = self._hashes[-1]
        for value in reversed(self._hashes[:-1]):
            merged = node_hash(value, merged)
        return merged


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, in O(n) hashing and O(log n) memory."""
    tree = CompactTree()
    tree.extend(hashes)
    return tree.root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 §2.1.3 PATH(index, D[n]) for the tree of all given leaf hashes, bottom-up."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf index {index} out of range for tree size {len(leaf_hashes)}")
    levels = _levels(leaf_hashes)
    proof: list[bytes] = []
    position = index
    for level in levels[:-1]:
        sibling = position ^ 1
        # A node with no sibling is the last of its level and moves up unchanged: nothing to prove there.
        if sibling < len(level):
            proof.append(level[sibling])
        position >>= 1
    return proof


def consistency_proof(leaf_hashes: Sequence[bytes], first: int, second: int) -> list[bytes]:
    """RFC 9162 §2.1.4 PROOF(first, D[second]) over a prefix of the given leaf hashes."""
    if not 0 < first <= second <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from size {first} to {second} over {len(leaf_hashes)} leaves")
    levels = _levels(leaf_hashes[:second])
    # SUBPROOF(m, D[start:end], complete), unrolled: each step appends after the recursive part, so
    # the hashes are collected top-down and reversed at the end.
    start, end, relative, complete = 0, second, first, True
    collected: list[bytes] = []
    while relative != end - start:
        split = 1 << ((end - start - 1).bit_length() - 1)
        if relative <= split:
            collected.append(_subtree(levels, start + split, end))
            end = start + split
        else:
            collected.append(_subtree(levels, start, start + split))
            start += split
            relative -= split
            complete = False
    head = [] if complete else [_subtree(levels, start, end)]
    return head + collected[::-1]


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    _require_tree_size(size, "size")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} out of range for tree size {size}")
    _require_proof_hash(leaf_hash, "leaf hash")
    _require_proof_hash(root, "root")
    for value in proof:
        _require_proof_hash(value, "proof hash")
    _verify_path(index, 0, size, seed=leaf_hash, proof=proof, root=root)


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size2`` leaves with ``root2`` extends the one of ``size1`` with ``root1``."""
    _require_tree_size(size1, "size1")
    _require_tree_size(size2, "size2")
    if size2 < size1:
        raise ProofError(f"tree size went backwards: {size1} > {size2}")
    if size1 == 0:
        # Every tree extends the empty tree; accepting a "proof" here would make it look like evidence.
        raise ProofError("a consistency proof from the empty tree proves nothing")
    _require_proof_hash(root1, "root1")
    _require_proof_hash(root2, "root2")
    for value in proof:
        _require_proof_hash(value, "proof hash")
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal but the proof has {len(proof)} hashes, want 0")
        if root1 != root2:
            raise ProofError(f"roots differ at the same size {size1}")
        return

    # The largest perfect subtree ending at size1 is node (level, index); the proof is that node (unless
    # size1 is a power of two, when it is root1 itself) and its inclusion path in the tree of size2.
    level = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> level
    if index == 0:
        _verify_path(index, level, size2, seed=root1, proof=proof, root=root2)
        return
    if not proof:
        raise ProofError("empty consistency proof")
    _verify_path(index, level, size2, seed=proof[0], proof=proof[1:], root=root2)

    # Rebuild root1 from the same hashes, keeping only those left of the path (the tree as it was at
    # size1): right siblings below the fork, and the ephemeral node beside it, all lie beyond size1.
    inner, right, _ = _path_shape(index, level, size2)
    merged = proof[0]
    for depth, value in enumerate(proof[1 : 1 + inner]):
        if (index >> depth) & 1:
            merged = node_hash(value, merged)
    for value in proof[1 + inner + right :]:
        merged = node_hash(value, merged)
    if merged != root1:
        raise ProofError(f"computed root at size {size1} does not match root1")


def _path_shape(index: int, level: int, size: int) -> tuple[int, int, int]:
    """How many hashes of the path of node (level, index) lie below, beside and above its fork."""
    # The fork is where the path to our node leaves the path to the right edge (0, size); below it the
    # path is ordinary, beside it there may be one ephemeral right sibling, above it only left siblings.
    inner = (index ^ (size >> level)).bit_length() - 1
    fork_level = level + inner
    fork_index = index >> inner
    begin = fork_index << fork_level
    end = (fork_index + 1) << fork_level
    return inner, 0 if end == size else 1, begin.bit_count()


def _verify_path(
    index: int, level: int, size: int, *, seed: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check the inclusion path of node (level, index) with hash ``seed`` in the tree of ``size`` leaves."""
    inner, right, left = _path_shape(index, level, size)
    want = inner + right + left
    if len(proof) != want:
        raise ProofError(f"wrong proof length {len(proof)}, want {want}")

    merged = seed
    position = index
    for value in proof[:inner]:
        merged = node_hash(merged, value) if position & 1 == 0 else node_hash(value, merged)
        position >>= 1
    if right:
        merged = node_hash(merged, proof[inner])
    for value in proof[inner + right :]:
        merged = node_hash(value, merged)
    if merged != root:
        raise ProofError(f"computed root at size {size} does not match the expected root")


def _levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first; a level's odd last node is carried up unchanged."""
    for value in leaf_hashes:
        _require_hash_size(value, "leaf hash")
    current = list(leaf_hashes)
    levels = [current]
    while len(current) > 1:
        paired = [node_hash(current[i], current[i + 1]) for i in range(0, len(current) - 1, 2)]
        if len(current) % 2:
            paired.append(current[-1])
        current = paired
        levels.append(current)
    return levels


def _subtree(levels: list[list[bytes]], start: int, end: int) -> bytes:
    """MTH of leaves [start, end), which must be a node of the tree the levels were built for."""
    # Such a node starts on a multiple of the smallest power of two not below its size, so it sits at
    # that level, either complete or as the carried-up last node of the level.
    level = (end - start - 1).bit_length()
    return levels[level][start >> level]


def _require_hash_size(value: bytes, what: str) -> None:
    """Refuse anything but a 32-byte hash where the caller is building a tree."""
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")


def _require_proof_hash(value: bytes, what: str) -> None:
    """Refuse anything but a 32-byte hash in something being verified."""
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes")


def _require_tree_size(value: int, what: str) -> None:
    """Refuse sizes a uint64 cannot hold."""
    if not 0 <= value <= MAX_TREE_SIZE:
        raise ProofError(f"{what} {value} out of range")
