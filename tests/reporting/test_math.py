"""The pure statistics math: percentiles, shares, periods, and cell suppression."""

from __future__ import annotations

import statistics
from datetime import UTC, date, datetime
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral.reporting import statmath
from referral.reporting.periods import Interval, bucket_start, buckets, is_aligned, next_bucket
from referral.reporting.suppression import Relation, primary, recoverable_cells, suppress
from referral.reporting.tables import COUNTS, Line, Scope, publish, relations
from tests.reporting.recovery import recoverable


def test_median_and_p90_interpolate_like_percentile_cont() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert statmath.percentile(values, statmath.MEDIAN) == 3.0
    # Position (5 - 1) * 0.9 = 3.6: 4 + 0.6 * (10 - 4).
    assert statmath.percentile(values, statmath.P90) == pytest.approx(7.6)
    assert statmath.percentile([1.0, 2.0], statmath.MEDIAN) == 1.5
    assert statmath.percentile([7.0], statmath.P90) == 7.0
    assert statmath.percentile([], statmath.MEDIAN) is None


def test_percentile_rank_is_exact() -> None:
    assert statmath.percentile_rank(11, statmath.P90) == statmath.Rank(9, 9, Fraction(0))
    assert statmath.percentile_rank(4, statmath.MEDIAN) == statmath.Rank(1, 2, Fraction(1, 2))
    with pytest.raises(ValueError, match="at least one"):
        statmath.percentile_rank(0, statmath.MEDIAN)


@given(st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), min_size=1, max_size=60))
def test_median_agrees_with_the_standard_library(values: list[float]) -> None:
    ordered = sorted(values)
    assert statmath.percentile(ordered, statmath.MEDIAN) == pytest.approx(statistics.median(ordered))
    # statistics.quantiles "inclusive" is the same type-7 interpolation.
    if len(ordered) > 1:
        expected = statistics.quantiles(ordered, n=10, method="inclusive")[8]
        assert statmath.percentile(ordered, statmath.P90) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_share() -> None:
    assert statmath.share(1, 3) == 0.3333
    assert statmath.share(0, 0) is None


@pytest.mark.parametrize(
    ("interval", "day", "start", "following"),
    [
        (Interval.DAY, date(2024, 2, 29), date(2024, 2, 29), date(2024, 3, 1)),
        (Interval.WEEK, date(2025, 1, 1), date(2024, 12, 30), date(2025, 1, 6)),
        (Interval.MONTH, date(2024, 12, 31), date(2024, 12, 1), date(2025, 1, 1)),
        (Interval.QUARTER, date(2025, 8, 15), date(2025, 7, 1), date(2025, 10, 1)),
        (Interval.QUARTER, date(2025, 11, 3), date(2025, 10, 1), date(2026, 1, 1)),
        (Interval.YEAR, date(2025, 6, 1), date(2025, 1, 1), date(2026, 1, 1)),
    ],
)
def test_periods(interval: Interval, day: date, start: date, following: date) -> None:
    assert bucket_start(day, interval) == start
    assert next_bucket(start, interval) == following


def test_buckets_cover_the_range_and_refuse_too_many() -> None:
    start = datetime(2025, 1, 15, 12, tzinfo=UTC)
    end = datetime(2025, 4, 1, tzinfo=UTC)
    assert buckets(start, end, Interval.MONTH) == [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)]
    assert is_aligned(end, Interval.MONTH)
    assert not is_aligned(start, Interval.MONTH)
    with pytest.raises(ValueError, match="more than"):
        buckets(datetime(2000, 1, 1, tzinfo=UTC), end, Interval.DAY)


def grid(values: list[list[int]]) -> tuple[dict[tuple[str, str], int], list[Relation[tuple[str, str]]]]:
    """A two-way table with its row, column and grand totals, and the sums that hold in it."""
    cells: dict[tuple[str, str], int] = {}
    rows = len(values)
    columns = len(values[0])
    for r in range(rows):
        for c in range(columns):
            cells[(f"r{r}", f"c{c}")] = values[r][c]
        cells[(f"r{r}", "T")] = sum(values[r])
    for c in range(columns):
        cells[("T", f"c{c}")] = sum(values[r][c] for r in range(rows))
    cells[("T", "T")] = sum(map(sum, values))
    sums = [Relation((f"r{r}", "T"), tuple((f"r{r}", f"c{c}") for c in range(columns))) for r in range(rows)]
    sums += [Relation(("T", f"c{c}"), tuple((f"r{r}", f"c{c}") for r in range(rows))) for c in range(columns)]
    sums.append(Relation(("T", "T"), tuple((f"r{r}", "T") for r in range(rows))))
    sums.append(Relation(("T", "T"), tuple(("T", f"c{c}") for c in range(columns))))
    return cells, sums


def attacker_view(
    cells: dict[tuple[str, str], int],
    hidden: frozenset[tuple[str, str]],
    sums: list[Relation[tuple[str, str]]],
) -> set[object]:
    published = {cell: (None if cell in hidden else value) for cell, value in cells.items()}
    return recoverable(published, [(relation.total, relation.parts) for relation in sums])


def test_a_lone_small_cell_gets_complements_in_its_row_and_column() -> None:
    cells, sums = grid([[2, 10, 12], [9, 11, 13], [20, 30, 40]])
    hidden = suppress(cells, sums, threshold=5)
    assert ("r0", "c0") in hidden
    assert len(hidden) >= 4  # a rectangle at least: its row and its column each need a second hidden cell
    assert attacker_view(cells, hidden, sums) == set()
    # Nothing hidden is zero and nothing published is small.
    assert all(cells[cell] > 0 for cell in hidden)
    assert not primary({cell: value for cell, value in cells.items() if cell not in hidden}, 5)


def test_subtraction_from_published_totals_is_not_enough() -> None:
    # The textbook leak: a hidden cell whose row total and other cells are published.
    cells, sums = grid([[3, 8], [7, 9]])
    leaky = frozenset({("r0", "c0")})
    assert attacker_view(cells, leaky, sums) == {("r0", "c0")}
    assert attacker_view(cells, suppress(cells, sums, threshold=5), sums) == set()


def test_sums_that_each_hide_two_cells_can_still_give_them_away_and_the_audit_catches_it() -> None:
    # a + c and b + c are published, and a + b follows from the first sum: every sum hides two cells, yet
    # three independent equations pin down all three small cells. Only solving the system shows it.
    cells = {"a": 1, "b": 2, "c": 3, "x": 10, "t1": 13, "t2": 4, "t3": 5}
    sums = [Relation("t1", ("a", "b", "x")), Relation("t2", ("a", "c")), Relation("t3", ("b", "c"))]
    assert recoverable_cells(sums, {"a", "b", "c"}) == {"a", "b", "c"}
    hidden = suppress(cells, sums, threshold=4)
    assert {"a", "b", "c"} <= hidden
    assert recoverable_cells(sums, set(hidden)) == set()
    published = {cell: (None if cell in hidden else value) for cell, value in cells.items()}
    assert recoverable(published, [(relation.total, relation.parts) for relation in sums]) == set()


def test_zeros_are_published_and_never_used_as_complements() -> None:
    cells, sums = grid([[0, 3, 9], [0, 8, 6]])
    hidden = suppress(cells, sums, threshold=5)
    assert ("r0", "c0") not in hidden
    assert ("r1", "c0") not in hidden
    assert attacker_view(cells, hidden, sums) == set()


def test_suppression_is_deterministic() -> None:
    cells, sums = grid([[1, 2, 3, 7], [4, 9, 2, 8], [6, 6, 1, 12]])
    assert suppress(cells, sums, threshold=5) == suppress(dict(cells), list(sums), threshold=5)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda rows: st.integers(min_value=1, max_value=4).flatmap(
            lambda columns: st.lists(
                st.lists(st.integers(min_value=0, max_value=12), min_size=columns, max_size=columns),
                min_size=rows,
                max_size=rows,
            )
        )
    ),
    st.integers(min_value=2, max_value=6),
)
def test_no_suppressed_cell_can_be_recovered(values: list[list[int]], threshold: int) -> None:
    cells, sums = grid(values)
    hidden = suppress(cells, sums, threshold)
    assert {cell for cell, value in cells.items() if 0 < value < threshold} <= hidden
    assert all(cells[cell] > 0 for cell in hidden)
    assert attacker_view(cells, hidden, sums) == set()


def test_a_published_table_hides_small_counts_and_what_would_reveal_them() -> None:
    def counts(received: int, removal_orders: int) -> dict[str, int]:
        figures = dict.fromkeys(COUNTS, 0)
        figures.update(
            received=received,
            removal_orders=removal_orders,
            referrals=received - removal_orders,
            pending=received,
        )
        return figures

    rows = [
        Line(Scope.ROW, date(2025, 1, 1), ("p1",), counts(2, 1)),
        Line(Scope.ROW, date(2025, 1, 1), ("p2",), counts(20, 10)),
        Line(Scope.ROW, date(2025, 2, 1), ("p2",), counts(30, 12)),
        Line(Scope.ROW, date(2025, 2, 1), ("p3",), counts(9, 6)),
    ]

    def margin(scope: Scope, members: list[Line], period: date | None, group: tuple[str, ...]) -> Line:
        total = dict.fromkeys(COUNTS, 0)
        for line in members:
            for name in COUNTS:
                total[name] += line.counts[name]
        return Line(scope, period, group, total)

    lines = [
        *rows,
        margin(Scope.PERIOD, rows[:2], date(2025, 1, 1), ()),
        margin(Scope.PERIOD, rows[2:], date(2025, 2, 1), ()),
        margin(Scope.GROUP, rows[:1], None, ("p1",)),
        margin(Scope.GROUP, rows[1:3], None, ("p2",)),
        margin(Scope.GROUP, rows[3:], None, ("p3",)),
        margin(Scope.TOTAL, rows, None, ()),
    ]
    published = publish(lines, threshold=5)
    assert published[0].figures["received"] is None
    assert "received" in published[0].suppressed
    assert published[0].figures["share_actioned"] is None  # its inputs are suppressed
    cells = {(index, name): line.figures[name] for index, line in enumerate(published) for name in COUNTS}
    sums = [(relation.total, relation.parts) for relation in relations(lines)]
    assert recoverable(cells, sums) == set()
    # Without suppression every figure is there.
    assert all(not line.suppressed for line in publish(lines, threshold=None))
