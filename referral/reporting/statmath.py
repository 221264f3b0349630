"""Statistics math, pure: percentiles by linear interpolation, and shares.

Percentiles follow PostgreSQL's ``percentile_cont`` (and numpy's default, Hyndman & Fan type 7): for ``n``
sorted values the ``q``-th percentile sits at position ``(n - 1) * q``, between the order statistics at the
floor and the ceiling of that position. The SQL on SQLite fetches only those order statistics (see
``referral.reporting.queries``); these functions say which ones and how to combine them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

MEDIAN: Final = Fraction(1, 2)
P90: Final = Fraction(9, 10)


@dataclass(frozen=True)
class Rank:
    """Where a percentile sits among ``n`` sorted values: zero-based ``lower`` and ``upper`` positions and
    the weight of the upper one."""

    lower: int
    upper: int
    weight: Fraction


def percentile_rank(count: int, quantile: Fraction) -> Rank:
    """The positions whose values a percentile of ``count`` sorted values interpolates between."""
    if count < 1:
        raise ValueError("a percentile needs at least one value")
    if not 0 <= quantile <= 1:
        raise ValueError("the quantile must be between 0 and 1")
    position = (count - 1) * quantile
    lower = position.numerator // position.denominator
    weight = position - lower
    return Rank(lower=lower, upper=lower + (1 if weight else 0), weight=weight)


def interpolate(lower_value: float, upper_value: float, weight: Fraction) -> float:
    """The value ``weight`` of the way from ``lower_value`` to ``upper_value``."""
    return lower_value + float(weight) * (upper_value - lower_value)


def percentile(sorted_values: Sequence[float], quantile: Fraction) -> float | None:
    """The ``quantile`` of already sorted values (None for none), interpolated linearly."""
    if not sorted_values:
        return None
    rank = percentile_rank(len(sorted_values), quantile)
    return interpolate(sorted_values[rank.lower], sorted_values[rank.upper], rank.weight)


def share(part: int, whole: int) -> float | None:
    """``part / whole`` rounded to four decimals, or None when there is no whole to share."""
    if whole <= 0:
        return None
    return round(part / whole, 4)
