"""The statistics table, pure: which figures there are, how they add up, and what may be published.

A table has four kinds of line: one per period and group (``row``), one per period over all groups
(``period``), one per group over all periods (``group``) and one over everything (``total``). Every count is
additive over lines, and some counts add up to others within a line (``received`` is the sum of the three
types, and again of the outcomes). Those sums are exactly the relations an observer could subtract along,
so they are what ``suppression`` protects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Final

from referral.reporting import statmath
from referral.reporting.suppression import Relation, suppress


class Scope(StrEnum):
    """Which lines of the data a line of the table adds up."""

    ROW = "row"
    PERIOD = "period"
    GROUP = "group"
    TOTAL = "total"


TYPE_COUNTS: Final = {
    "referral": "referrals",
    "removal_order": "removal_orders",
    "preservation_request": "preservation_requests",
}
# Where each request stands now; together they cover every status (see ``queries.OUTCOME_OF_STATUS``).
OUTCOME_COUNTS: Final = ("pending", "actioned", "reinstated", "no_action", "withdrawn", "preserved")
# Time from receipt to the provider's decision, in buckets: (name, upper bound in seconds).
ACTION_TIME_BUCKETS: Final[tuple[tuple[str, int | None], ...]] = (
    ("action_within_1h", 3600),
    ("action_1h_to_4h", 4 * 3600),
    ("action_4h_to_24h", 24 * 3600),
    ("action_1d_to_7d", 7 * 24 * 3600),
    ("action_over_7d", None),
)
COUNTS: Final = (
    "received",
    *TYPE_COUNTS.values(),
    *OUTCOME_COUNTS,
    "decided",
    "acknowledged",
    *(name for name, _ in ACTION_TIME_BUCKETS),
    "removal_orders_due",
    "removal_orders_within_deadline",
    "overdue",
    "preservations_active",
    "preservations_extended",
    "preservations_expired",
    "contested",
    "upheld",
    "overlaps",
)
# Sums that hold within every line: total -> parts.
IDENTITIES: Final = (
    ("received", tuple(TYPE_COUNTS.values())),
    ("received", OUTCOME_COUNTS),
    ("decided", ("actioned", "reinstated", "no_action")),
    ("decided", tuple(name for name, _ in ACTION_TIME_BUCKETS)),
)
# Median and 90th percentile of these durations (seconds), each over the requests the count names.
DURATIONS: Final = {"ack": "acknowledged", "action": "decided"}
DURATION_FIGURES: Final = tuple(
    f"{kind}_{statistic}_seconds" for kind in DURATIONS for statistic in ("median", "p90")
)


@dataclass(frozen=True)
class Share:
    """A share published only when every count it is computed from is."""

    numerator: tuple[str, ...]
    denominator: str
    inputs: tuple[str, ...]


SHARES: Final = {
    # Decided by acting on it, of all decided (a reinstated decision had been an action).
    "share_actioned": Share(
        numerator=("actioned", "reinstated"),
        denominator="decided",
        inputs=("actioned", "reinstated", "no_action", "decided"),
    ),
    "removal_orders_within_deadline_share": Share(
        numerator=("removal_orders_within_deadline",),
        denominator="removal_orders_due",
        inputs=("removal_orders_within_deadline", "removal_orders_due"),
    ),
}
FIGURES: Final = (*COUNTS, *SHARES, *DURATION_FIGURES)
# What hiding a count as a complement costs, per unit of its value: the wider a line, the more it is read.
COMPLEMENT_WEIGHTS: Final = {Scope.ROW: 1.0, Scope.PERIOD: 3.0, Scope.GROUP: 3.0, Scope.TOTAL: 50.0}


@dataclass(frozen=True)
class Line:
    """One line as computed: counts, and the duration percentiles (None where nothing was timed)."""

    scope: Scope
    period: date | None
    group: tuple[str, ...]
    counts: Mapping[str, int]
    durations: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedLine:
    """One line as published: every figure, None where suppressed (and named in ``suppressed``)."""

    scope: Scope
    period: date | None
    group: tuple[str, ...]
    figures: dict[str, int | float | None]
    suppressed: tuple[str, ...]


def empty_counts() -> dict[str, int]:
    """Every count at zero."""
    return dict.fromkeys(COUNTS, 0)


def add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    """Add ``counts`` to ``into``, count by count."""
    for name in COUNTS:
        into[name] += counts.get(name, 0)


def _margins(lines: Sequence[Line]) -> list[tuple[int, list[int]]]:
    """Each margin line with the lines it is the sum of (a kind of line not in the table adds nothing up)."""
    rows = [index for index, line in enumerate(lines) if line.scope is Scope.ROW]
    margins = []
    for index, line in enumerate(lines):
        if line.scope is Scope.PERIOD and rows:
            margins.append((index, [row for row in rows if lines[row].period == line.period]))
        elif line.scope is Scope.GROUP and rows:
            margins.append((index, [row for row in rows if lines[row].group == line.group]))
        elif line.scope is Scope.TOTAL:
            for scope in (Scope.PERIOD, Scope.GROUP):
                members = [member for member, other in enumerate(lines) if other.scope is scope]
                if members:
                    margins.append((index, members))
    return margins


def relations(lines: Sequence[Line]) -> list[Relation[tuple[int, str]]]:
    """Every sum that holds between the counts of ``lines``; cells are ``(line index, count name)``."""
    margins = _margins(lines)
    sums = [
        Relation((margin, name), tuple((member, name) for member in members))
        for name in COUNTS
        for margin, members in margins
    ]
    for index in range(len(lines)):
        for total, parts in IDENTITIES:
            sums.append(Relation((index, total), tuple((index, part) for part in parts)))
    return sums


def publish(lines: Sequence[Line], *, threshold: int | None) -> list[PublishedLine]:
    """The lines with their figures; with a ``threshold``, small cells and their complements suppressed."""
    hidden: frozenset[tuple[int, str]] = frozenset()
    if threshold is not None:
        values = {
            (index, name): line.counts.get(name, 0) for index, line in enumerate(lines) for name in COUNTS
        }
        weights = {(index, name): COMPLEMENT_WEIGHTS[lines[index].scope] for index, name in values}
        hidden = suppress(values, relations(lines), threshold, weights=weights)
    return [_published(index, line, hidden, threshold) for index, line in enumerate(lines)]


def _published(
    index: int, line: Line, hidden: frozenset[tuple[int, str]], threshold: int | None
) -> PublishedLine:
    figures: dict[str, int | float | None] = {}
    suppressed = []
    for name in COUNTS:
        if (index, name) in hidden:
            figures[name] = None
            suppressed.append(name)
        else:
            figures[name] = line.counts.get(name, 0)
    for name, rule in SHARES.items():
        if any((index, count) in hidden for count in rule.inputs):
            figures[name] = None
            suppressed.append(name)
            continue
        numerator = sum(line.counts.get(count, 0) for count in rule.numerator)
        figures[name] = statmath.share(numerator, line.counts.get(rule.denominator, 0))
    for kind, count in DURATIONS.items():
        timed = line.counts.get(count, 0)
        for statistic in ("median", "p90"):
            name = f"{kind}_{statistic}_seconds"
            if threshold is not None and 0 < timed < threshold:
                figures[name] = None
                suppressed.append(name)
            else:
                figures[name] = line.durations.get(name)
    return PublishedLine(
        scope=line.scope,
        period=line.period,
        group=line.group,
        figures=figures,
        suppressed=tuple(suppressed),
    )
