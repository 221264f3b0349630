"""Cell suppression, pure: hide small counts, and enough other counts that none can be worked out again.

A published table is a set of count cells tied together by *relations*: a total is the sum of its parts (a
row total over its cells, a period total over the rows of that period, ``received`` over the three types,
...). Anyone can subtract the published members of a relation from its total, so hiding a small cell is not
enough:

1. **Primary suppression** hides every count from 1 to ``threshold - 1``. Zeros stay published: "none" is
   not a group of people or cases that can be singled out, and a zero line tells no more than its total.
2. **Complementary suppression** then hides, in every relation with exactly one hidden member, the
   smallest other member that is not zero (a part rather than the total, if a part will do).
3. An **audit** solves the whole system: a hidden cell can be recovered by combining published figures if
   and only if its unit vector lies in the row space of the relations restricted to the hidden cells
   (exact, fraction-free Gaussian elimination). Each group of tied hidden cells with a recoverable one gets
   one more complement per round, and the rounds repeat until nothing hidden can be recovered. Hiding more
   never makes a hidden cell recoverable, so the loop ends, at worst with every non-zero count hidden.

Every hidden cell is at least 1 and lies on a null-space direction of the system, so moving the hidden
values a little along it keeps them non-negative and consistent with everything published: no hidden value
is pinned down exactly, not even with the knowledge that counts are never negative.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Relation(Generic[K]):
    """Published cells with ``total == sum(parts)``."""

    total: K
    parts: tuple[K, ...]

    @property
    def members(self) -> tuple[K, ...]:
        """The total and its parts."""
        return (self.total, *self.parts)


def primary(values: Mapping[K, int], threshold: int) -> set[K]:
    """The cells too small to publish: from 1 to ``threshold - 1``."""
    return {cell for cell, value in values.items() if 0 < value < threshold}


def suppress(
    values: Mapping[K, int],
    relations: Sequence[Relation[K]],
    threshold: int,
    *,
    weights: Mapping[K, float] | None = None,
) -> frozenset[K]:
    """The cells to hide so that no count below ``threshold`` is published or can be recovered.

    ``values`` holds every published cell (cells a relation names but ``values`` lacks count as zero);
    the order of ``values`` breaks ties, so the result is deterministic. A complement costs its value times
    its weight (default 1): give totals a high weight to keep them published where anything else will do.
    """
    cost = {cell: value * (weights or {}).get(cell, 1.0) for cell, value in values.items()}
    order = {cell: (cost[cell], position) for position, cell in enumerate(values)}
    relations_of: dict[K, list[Relation[K]]] = defaultdict(list)
    for relation in relations:
        for member in relation.members:
            relations_of[member].append(relation)
    hidden = primary(values, threshold)
    # Work in the order of ``values``: the same table is always suppressed the same way.
    first = sorted(hidden, key=lambda cell: order[cell][1])
    pending = [relation for cell in first for relation in relations_of[cell]]
    pending.reverse()
    while True:
        _complete(values, relations_of, hidden, pending, order)
        recoverable = recoverable_cells(relations, hidden)
        if not recoverable:
            return frozenset(hidden)
        # One complement per group of tied hidden cells per round: one often frees the whole group.
        added: list[K] = []
        for cell in sorted(recoverable, key=lambda cell: order[cell][1]):
            added.append(_complement(values, relations_of, hidden, cell, order=order, taken=set(added)))
        hidden.update(added)
        pending = [
            relation for complement in reversed(added) for relation in reversed(relations_of[complement])
        ]


def _value(values: Mapping[K, int], cell: K) -> int:
    return values.get(cell, 0)


def _candidates(
    values: Mapping[K, int], relation: Relation[K], hidden: set[K], order: Mapping[K, tuple[float, int]]
) -> list[K]:
    """Published non-zero members of ``relation`` that could be hidden: parts (cheapest first), then total."""
    parts = sorted(
        (part for part in relation.parts if part not in hidden and _value(values, part) > 0),
        key=order.__getitem__,
    )
    total = [relation.total] if relation.total not in hidden and _value(values, relation.total) > 0 else []
    return parts + total


def _complete(
    values: Mapping[K, int],
    relations_of: Mapping[K, list[Relation[K]]],
    hidden: set[K],
    pending: list[Relation[K]],
    order: Mapping[K, tuple[float, int]],
) -> None:
    """Hide complements until no relation has exactly one hidden member (a one-step subtraction)."""
    while pending:
        relation = pending.pop()
        if sum(member in hidden for member in relation.members) != 1:
            continue
        # One hidden member, at least 1, so some other member is non-zero: its total, or one of its parts.
        complement = _candidates(values, relation, hidden, order)[0]
        hidden.add(complement)
        pending.extend(relations_of.get(complement, ()))


def _complement(
    values: Mapping[K, int],
    relations_of: Mapping[K, list[Relation[K]]],
    hidden: set[K],
    cell: K,
    *,
    order: Mapping[K, tuple[float, int]],
    taken: set[K],
) -> K:
    """One more cell to hide for ``cell``: the cheapest published non-zero member of its own relations not
    ``taken`` this round, else of the relations one hidden cell further out, and so on."""
    seen = {cell}
    layer = [cell]
    while layer:
        relations = [relation for current in layer for relation in relations_of.get(current, ())]
        candidates = sorted(
            {
                member
                for relation in relations
                for member in relation.members
                if member not in hidden and member not in taken and _value(values, member) > 0
            },
            key=order.__getitem__,
        )
        if candidates:
            return candidates[0]
        layer = [
            member
            for relation in relations
            for member in relation.members
            if member in hidden and member not in seen and not seen.add(member)  # type: ignore[func-returns-value]
        ]
    # A hidden cell (>= 1) solved from zeros alone would have to be 0: some published non-zero cell is near.
    raise AssertionError("a recoverable cell must be tied to some published non-zero count")


def recoverable_cells(relations: Iterable[Relation[K]], hidden: set[K]) -> set[K]:
    """The hidden cells whose value follows from the published ones through the relations."""
    rows = []
    for relation in relations:
        row: dict[K, int] = {}
        if relation.total in hidden:
            row[relation.total] = -1
        for part in relation.parts:
            if part in hidden:
                row[part] = row.get(part, 0) + 1
        row = {cell: coefficient for cell, coefficient in row.items() if coefficient}
        if row:
            rows.append(row)
    return {cell for cell, row in _reduced_rows(rows).items() if len(row) == 1}


def _reduced_rows(rows: Iterable[dict[K, int]]) -> dict[K, dict[K, int]]:
    """The reduced row echelon form of sparse integer rows, as pivot cell -> row.

    Fraction-free and exact: a row is reduced by ``row * p - pivot_row * r`` and divided by the gcd of its
    entries, so the (small) integers never grow. Every pivot cell appears in its own row only, so a cell is
    determined exactly when its row has no other entry.
    """
    pivots: dict[K, dict[K, int]] = {}
    rows_with: dict[K, set[K]] = defaultdict(set)  # cell -> pivots whose row mentions it
    rows = list(rows)
    # Short rows first, and pivots on the cells the fewest rows mention: little fill-in (Markowitz).
    mentions: dict[K, int] = defaultdict(int)
    for row in rows:
        for cell in row:
            mentions[cell] += 1
    for original in sorted(rows, key=len):
        row = dict(original)
        for cell in [cell for cell in row if cell in pivots]:
            _eliminate(row, pivots[cell], cell)
        if not row:
            continue
        pivot = min(row, key=lambda cell: (mentions[cell], abs(row[cell]) != 1))
        for other in list(rows_with.get(pivot, ())):
            other_row = pivots[other]
            before = set(other_row)
            _eliminate(other_row, row, pivot)
            for cell in before - set(other_row):
                rows_with[cell].discard(other)
            for cell in set(other_row) - before:
                rows_with[cell].add(other)
        pivots[pivot] = row
        for cell in row:
            rows_with[cell].add(pivot)
    return pivots


def _eliminate(row: dict[K, int], pivot_row: Mapping[K, int], pivot: K) -> None:
    """Clear ``pivot`` from ``row`` with an integer combination of it and ``pivot_row``, in place."""
    factor = row.get(pivot, 0)
    if not factor:
        return
    scale = pivot_row[pivot]
    for cell in list(row):
        row[cell] *= scale
    for cell, coefficient in pivot_row.items():
        value = row.get(cell, 0) - factor * coefficient
        if value:
            row[cell] = value
        else:
            row.pop(cell, None)
    divisor = gcd(*row.values()) if row else 1
    if divisor > 1:
        for cell in row:
            row[cell] //= divisor
