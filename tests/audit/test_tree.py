"""The stored-subtree proof assembly agrees with the reference Merkle functions for every shape of tree."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from referral.audit import merkle
from referral.audit.tree import (
    Node,
    append_leaves,
    consistency_ranges,
    edge_root,
    inclusion_ranges,
    perfect_cover,
    range_hash,
    right_edge,
)


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]


def _store(leaves: list[bytes], batches: list[int]) -> tuple[dict[tuple[int, int], bytes], list[Node]]:
    """Append in the given batch sizes, storing every completed subtree as the sequencer does."""
    stored = {(0, i): h for i, h in enumerate(leaves)}
    edge: list[Node] = []
    position = 0
    for batch in batches:
        edge, completed = append_leaves(edge, position, leaves[position : position + batch])
        for node in completed:
            assert (node.level, node.index) not in stored
            stored[(node.level, node.index)] = node.hash
        position += batch
        assert edge_root(edge) == merkle.root_from_leaf_hashes(leaves[:position])
        assert [(n.level, n.index) for n in edge] == right_edge(position)
    return stored, edge


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12), st.data())
def test_batched_appends_store_subtrees_that_reproduce_every_proof(
    batches: list[int], data: st.DataObject
) -> None:
    size = sum(batches)
    leaves = _leaves(size)
    stored, _ = _store(leaves, batches)

    def lookup(level: int, index: int) -> bytes:
        return stored[(level, index)]

    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    tree_size = data.draw(st.integers(min_value=index + 1, max_value=size))
    proof = [range_hash(a, b, lookup) for a, b in inclusion_ranges(index, tree_size)]
    assert proof == merkle.inclusion_proof(leaves[:tree_size], index)

    first = data.draw(st.integers(min_value=1, max_value=size))
    second = data.draw(st.integers(min_value=first, max_value=size))
    consistency = [range_hash(a, b, lookup) for a, b in consistency_ranges(first, second)]
    assert consistency == merkle.consistency_proof(leaves[:second], first, second)
    merkle.verify_consistency(
        first,
        second,
        consistency,
        merkle.root_from_leaf_hashes(leaves[:first]),
        merkle.root_from_leaf_hashes(leaves[:second]),
    )


def test_perfect_cover_lists_what_range_hash_reads() -> None:
    for start, end in [(0, 1), (0, 7), (8, 13), (4, 8), (16, 21)]:
        read: list[tuple[int, int]] = []

        def lookup(level: int, index: int, read: list[tuple[int, int]] = read) -> bytes:
            read.append((level, index))
            return bytes(32)

        range_hash(start, end, lookup)
        assert sorted(read) == sorted(perfect_cover(start, end))


def test_right_edge_is_the_binary_decomposition_of_the_size() -> None:
    assert right_edge(0) == []
    assert right_edge(1) == [(0, 0)]
    assert right_edge(6) == [(2, 0), (1, 2)]
    assert right_edge(7) == [(2, 0), (1, 2), (0, 6)]
    assert right_edge(8) == [(3, 0)]
