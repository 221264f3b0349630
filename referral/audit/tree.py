"""How the stored tree is used: which perfect subtrees an append completes, and which stored subtrees make
up any hash a proof needs.

Every complete subtree of 2**level leaves starting at leaf ``index * 2**level`` is stored once (level 0 in
``audit_leaves``, higher levels in ``audit_nodes``). Any subtree hash of RFC 9162's MTH recursion over the
first ``n`` leaves is a fold of O(log n) of them, so proofs never re-read the whole log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from referral.audit.merkle import EMPTY_ROOT, node_hash

NodeKey = tuple[int, int]  # (level, index)


@dataclass(frozen=True)
class Node:
    """A stored perfect subtree hash."""

    level: int
    index: int
    hash: bytes


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def right_edge(size: int) -> list[NodeKey]:
    """The perfect subtrees whose roots make up a tree of ``size`` leaves, left to right."""
    keys: list[NodeKey] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    return keys


def append_leaves(
    edge: list[Node], first_index: int, leaf_hashes: Iterable[bytes]
) -> tuple[list[Node], list[Node]]:
    """Append leaves to a tree given by its right edge; return the new edge and every subtree completed."""
    stack = list(edge)
    completed: list[Node] = []
    for offset, leaf in enumerate(leaf_hashes):
        stack.append(Node(0, first_index + offset, leaf))
        while len(stack) >= 2 and stack[-1].level == stack[-2].level:
            right = stack.pop()
            left = stack.pop()
            merged = Node(left.level + 1, left.index >> 1, node_hash(left.hash, right.hash))
            stack.append(merged)
            completed.append(merged)
    return stack, completed


def edge_root(edge: list[Node]) -> bytes:
    """The root hash of the tree whose right edge this is."""
    if not edge:
        return EMPTY_ROOT
    root = edge[-1].hash
    for node in reversed(edge[:-1]):
        root = node_hash(node.hash, root)
    return root


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree hashes form the inclusion proof of ``index`` (RFC 9162 §2.1.3.1 PATH)."""
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree hashes form the consistency proof (RFC 9162 §2.1.4.1 SUBPROOF)."""
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, second, first, True
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def perfect_cover(start: int, end: int) -> list[NodeKey]:
    """The stored subtrees that the MTH of leaves [start, end) is folded from."""
    keys: list[NodeKey] = []
    while end - start > 0:
        width = end - start
        if width & (width - 1) == 0 and start % width == 0:
            keys.append((width.bit_length() - 1, start // width))
            return keys
        k = _largest_power_of_two_below(width)
        keys.append(((k.bit_length() - 1), start // k))
        start += k
    return keys


def range_hash(start: int, end: int, lookup: Callable[[int, int], bytes]) -> bytes:
    """The MTH of leaves [start, end) from stored subtree hashes (``lookup(level, index)``)."""
    width = end - start
    if width & (width - 1) == 0 and start % width == 0:
        return lookup(width.bit_length() - 1, start // width)
    k = _largest_power_of_two_below(width)
    return node_hash(range_hash(start, start + k, lookup), range_hash(start + k, end, lookup))
