"""An attacker's view of a suppressed table, written apart from ``referral.reporting.suppression``.

Given cells (published values, or None when suppressed) and sums known to hold between them, a hidden cell
can be recovered by adding and subtracting published figures exactly when its unit vector is in the row
space of the sums restricted to the hidden cells. Here that is decided by Gauss-Jordan elimination modulo
a large prime (a different method from the service's exact integer elimination, so the two check each
other): a cell is recoverable when its reduced row has no other entry.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

PRIME = (1 << 61) - 1


def recoverable(
    cells: Mapping[Hashable, int | None], sums: Sequence[tuple[Hashable, Sequence[Hashable]]]
) -> set[Hashable]:
    """The hidden cells (value None) that the published cells and ``sums`` (total, parts) determine."""
    hidden = {cell for cell, value in cells.items() if value is None}
    reduced: dict[Hashable, dict[Hashable, int]] = {}
    for total, parts in sums:
        row: dict[Hashable, int] = {}
        for cell, sign in [(total, -1), *((part, 1) for part in parts)]:
            if cell in hidden:
                row[cell] = (row.get(cell, 0) + sign) % PRIME
        row = {cell: value for cell, value in row.items() if value}
        for pivot, pivot_row in reduced.items():
            factor = row.get(pivot)
            if factor:
                for cell, value in pivot_row.items():
                    row[cell] = (row.get(cell, 0) - factor * value) % PRIME
                row = {cell: value for cell, value in row.items() if value}
        if not row:
            continue
        pivot = next(iter(row))
        inverse = pow(row[pivot], PRIME - 2, PRIME)
        row = {cell: value * inverse % PRIME for cell, value in row.items()}
        for other, other_row in reduced.items():
            factor = other_row.get(pivot)
            if factor:
                for cell, value in row.items():
                    other_row[cell] = (other_row.get(cell, 0) - factor * value) % PRIME
                reduced[other] = {cell: value for cell, value in other_row.items() if value}
        reduced[pivot] = row
    return {pivot for pivot, row in reduced.items() if len(row) == 1}
