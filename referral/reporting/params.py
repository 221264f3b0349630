"""Query parameters of the statistics: parsed and checked, every bad one named in one 422."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from multidict import MultiMapping

from referral.core import errors
from referral.parties.countries import is_country_code
from referral.referrals.documents import Category, DocumentType
from referral.reporting.periods import Interval, buckets
from referral.reporting.tables import OUTCOME_COUNTS

DEFAULT_RANGE: Final = timedelta(days=365)
_IDENTIFIER = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Dimension(StrEnum):
    """What statistics can be grouped and filtered by."""

    TYPE = "type"
    CATEGORY = "category"
    PROVIDER = "provider"
    AUTHORITY = "authority"
    COUNTRY = "country"
    OUTCOME = "outcome"


class Format(StrEnum):
    """How the statistics are serialised."""

    JSON = "json"
    CSV = "csv"


@dataclass(frozen=True)
class StatsQuery:
    """One statistics request: the range ``[start, end)`` of receipt, the period width, the grouping, and
    the filters (each dimension: any of the listed values)."""

    start: datetime
    end: datetime
    interval: Interval = Interval.MONTH
    group_by: tuple[Dimension, ...] = ()
    filters: Mapping[Dimension, tuple[str, ...]] = field(default_factory=dict)

    def filter_values(self) -> dict[str, list[str]]:
        """The filters as plain JSON."""
        return {dimension.value: list(values) for dimension, values in self.filters.items()}


def _allowed_values(dimension: Dimension) -> frozenset[str] | None:
    """The closed set of values of a dimension, or None for party ids and countries."""
    if dimension is Dimension.TYPE:
        return frozenset(member.value for member in DocumentType)
    if dimension is Dimension.CATEGORY:
        return frozenset(member.value for member in Category)
    if dimension is Dimension.OUTCOME:
        return frozenset(OUTCOME_COUNTS)
    return None


def _value_problem(dimension: Dimension, value: str) -> str | None:
    allowed = _allowed_values(dimension)
    if allowed is not None:
        return None if value in allowed else f"must be one of: {', '.join(sorted(allowed))}"
    if dimension is Dimension.COUNTRY:
        return None if is_country_code(value) else "must be an ISO 3166-1 alpha-2 code"
    return None if _IDENTIFIER.fullmatch(value) else "must be a party id"


def _error(name: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["query", name], "msg": message, "type": kind}


def _values(query: MultiMapping[str], name: str) -> list[str]:
    """Every value of a parameter given once with commas, or repeated."""
    return [value.strip() for raw in query.getall(name, []) for value in raw.split(",") if value.strip()]


def _moment(raw: str) -> datetime:
    """A date (midnight UTC) or an RFC 3339 date-time with a time zone."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        return datetime.combine(date.fromisoformat(raw), datetime.min.time(), tzinfo=UTC)
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("needs a time zone")
    return moment.astimezone(UTC)


def _range(
    query: MultiMapping[str], now: datetime, problems: list[dict[str, Any]]
) -> tuple[datetime, datetime]:
    moments: dict[str, datetime] = {}
    for name in ("from", "to"):
        raw = query.get(name)
        if raw is None:
            continue
        try:
            moments[name] = _moment(raw)
        except ValueError:
            problems.append(_error(name, "must be a date (YYYY-MM-DD) or an RFC 3339 date-time with a zone"))
    end = moments.get("to", now)
    start = moments.get("from", end - DEFAULT_RANGE)
    if not problems and start >= end:
        problems.append(_error("from", "must be before to"))
    return start, end


def _interval(query: MultiMapping[str], problems: list[dict[str, Any]]) -> Interval:
    try:
        return Interval(query.get("interval", Interval.MONTH.value))
    except ValueError:
        problems.append(_error("interval", f"must be one of: {', '.join(Interval)}"))
        return Interval.MONTH


def _group_by(query: MultiMapping[str], problems: list[dict[str, Any]]) -> tuple[Dimension, ...]:
    group_by: dict[Dimension, None] = {}
    for raw in _values(query, "group_by"):
        try:
            group_by[Dimension(raw)] = None
        except ValueError:
            problems.append(_error("group_by", f"{raw[:64]!r} is not one of: {', '.join(Dimension)}"))
    return tuple(group_by)


def _filters(query: MultiMapping[str], problems: list[dict[str, Any]]) -> dict[Dimension, tuple[str, ...]]:
    filters: dict[Dimension, tuple[str, ...]] = {}
    for dimension in Dimension:
        values = _values(query, dimension.value)
        for value in values:
            problem = _value_problem(dimension, value)
            if problem:
                problems.append(_error(dimension.value, f"{value[:64]!r} {problem}"))
        if values:
            filters[dimension] = tuple(dict.fromkeys(values))
    return filters


def parse_stats_query(query: MultiMapping[str], *, now: datetime) -> StatsQuery:
    """The statistics request in ``query``; 422 listing every bad parameter."""
    problems: list[dict[str, Any]] = []
    start, end = _range(query, now, problems)
    interval = _interval(query, problems)
    group_by = _group_by(query, problems)
    filters = _filters(query, problems)
    if not problems:
        try:
            buckets(start, end, interval)
        except ValueError as exc:
            problems.append(_error("interval", str(exc)))
    if problems:
        raise errors.ValidationFailed("the statistics query is invalid", errors=problems)
    return StatsQuery(start=start, end=end, interval=interval, group_by=group_by, filters=filters)


def parse_format(query: Mapping[str, str], accept: str) -> Format:
    """JSON unless ``format=csv`` or the client accepts ``text/csv`` (and not JSON first)."""
    raw = query.get("format")
    if raw is not None:
        try:
            return Format(raw)
        except ValueError:
            raise errors.ValidationFailed(
                "the statistics query is invalid",
                errors=[_error("format", f"must be one of: {', '.join(Format)}")],
            ) from None
    preferred = accept.split(",", maxsplit=1)[0].split(";", maxsplit=1)[0].strip()
    return Format.CSV if preferred == "text/csv" else Format.JSON
