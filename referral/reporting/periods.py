"""Reporting periods, pure: calendar buckets in UTC, each named by the date it starts on.

Weeks are ISO weeks (starting on Monday); quarters start in January, April, July and October.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

MAX_BUCKETS = 1000


class Interval(StrEnum):
    """The width of one reporting period."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


def bucket_start(day: date, interval: Interval) -> date:
    """The first day of the period of ``interval`` that contains ``day``."""
    if interval is Interval.DAY:
        return day
    if interval is Interval.WEEK:
        return day - timedelta(days=day.weekday())
    if interval is Interval.MONTH:
        return day.replace(day=1)
    if interval is Interval.QUARTER:
        return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return date(day.year, 1, 1)


def next_bucket(start: date, interval: Interval) -> date:
    """The first day of the period after the one starting on ``start``."""
    if interval is Interval.DAY:
        return start + timedelta(days=1)
    if interval is Interval.WEEK:
        return start + timedelta(days=7)
    if interval is Interval.YEAR:
        return date(start.year + 1, 1, 1)
    months = 1 if interval is Interval.MONTH else 3
    month_index = start.year * 12 + start.month - 1 + months
    return date(month_index // 12, month_index % 12 + 1, 1)


def midnight(day: date) -> datetime:
    """00:00 UTC of ``day``."""
    return datetime.combine(day, time(), tzinfo=UTC)


def buckets(start: datetime, end: datetime, interval: Interval) -> list[date]:
    """The periods that overlap ``[start, end)``, in order; ValueError past ``MAX_BUCKETS``."""
    periods = []
    current = bucket_start(start.astimezone(UTC).date(), interval)
    while midnight(current) < end:
        periods.append(current)
        if len(periods) > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} periods; choose a wider interval or a shorter range")
        current = next_bucket(current, interval)
    return periods


def is_aligned(moment: datetime, interval: Interval) -> bool:
    """Whether ``moment`` is the very start of a period of ``interval``."""
    moment = moment.astimezone(UTC)
    return moment.timetz() == time(tzinfo=UTC) and bucket_start(moment.date(), interval) == moment.date()
