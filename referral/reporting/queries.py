"""The SQL behind the statistics: one aggregate query per table level, the same figures on both databases.

Counts are ``SUM(CASE ...)`` over the referrals in range, grouped by period and the requested dimensions.
Durations are percentiles: PostgreSQL computes them with ``percentile_cont``; SQLite has no percentile
aggregate, so a window query ranks each group's durations and returns only the (at most four) order
statistics the median and the 90th percentile interpolate between, which ``statmath`` then combines the same
way ``percentile_cont`` does. No query returns a row per referral.

Timestamps are stored as ``timestamptz`` on PostgreSQL (the session time zone is UTC) and as naive UTC text
on SQLite, so periods and durations are computed in UTC on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from fractions import Fraction
from typing import Any, Final

from sqlalchemy import Float, Integer, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from referral.parties.models import Party
from referral.referrals.documents import DocumentType, Status
from referral.referrals.models import Referral, ReferralLink, ReferralStatus
from referral.referrals.service import overdue_condition
from referral.reporting import statmath
from referral.reporting.params import Dimension, StatsQuery
from referral.reporting.periods import Interval
from referral.reporting.tables import ACTION_TIME_BUCKETS, DURATIONS, TYPE_COUNTS

# Where a request stands now, by its status. Every status has exactly one outcome.
OUTCOME_OF_STATUS: Final = {
    Status.SUBMITTED: "pending",
    Status.DELIVERED: "pending",
    Status.ACKNOWLEDGED: "pending",
    Status.IN_REVIEW: "pending",
    Status.INFO_REQUESTED: "pending",
    Status.INFO_PROVIDED: "pending",
    # The provider acted, and the action stands (a complaint may be pending or was rejected).
    Status.ACTION_TAKEN: "actioned",
    Status.PARTIALLY_ACTIONED: "actioned",
    Status.CONTESTED: "actioned",
    Status.UPHELD: "actioned",
    Status.REINSTATED: "reinstated",
    Status.NO_ACTION: "no_action",
    Status.WITHDRAWN: "withdrawn",
    Status.PRESERVED: "preserved",
    Status.PRESERVATION_EXTENDED: "preserved",
    Status.PRESERVATION_RELEASED: "preserved",
    Status.EXPIRED: "preserved",
}
# The provider decided by acting (even if the content was reinstated later).
ACTIONED_STATUSES: Final = tuple(
    status.value for status, outcome in OUTCOME_OF_STATUS.items() if outcome in ("actioned", "reinstated")
)
DECIDED_STATUSES: Final = (*ACTIONED_STATUSES, Status.NO_ACTION.value)
_PRESERVING = (Status.PRESERVED.value, Status.PRESERVATION_EXTENDED.value)
_PRESERVATION_ENDED = (Status.PRESERVATION_RELEASED.value, Status.EXPIRED.value)
_COMPLAINED = (Status.CONTESTED.value, Status.UPHELD.value, Status.REINSTATED.value)


@dataclass(frozen=True)
class Audience:
    """Whose requests the figures cover (None: every party's) and whether small cells are suppressed."""

    issuer_id: str | None = None
    addressee_id: str | None = None
    suppressed: bool = False


def statuses_of(outcome: str) -> list[str]:
    """The statuses that make up an outcome."""
    return [status.value for status, value in OUTCOME_OF_STATUS.items() if value == outcome]


def outcome_column() -> ColumnElement[str]:
    """The outcome of each referral, from its status."""
    outcomes = dict.fromkeys(OUTCOME_OF_STATUS.values())
    return case(
        *((Referral.status.in_(statuses_of(outcome)), literal(outcome)) for outcome in outcomes),
        else_=literal("pending"),
    )


def dimension_column(dimension: Dimension) -> ColumnElement[str]:
    """The column a dimension groups and filters by (``country`` is the issuing authority's)."""
    columns: dict[Dimension, Any] = {
        Dimension.TYPE: Referral.type,
        Dimension.CATEGORY: Referral.category,
        Dimension.PROVIDER: Referral.addressee_id,
        Dimension.AUTHORITY: Referral.issuer_id,
        Dimension.COUNTRY: Party.country,
    }
    if dimension is Dimension.OUTCOME:
        return outcome_column()
    column: ColumnElement[str] = columns[dimension]
    return column


def period_column(dialect: str, interval: Interval) -> ColumnElement[str]:
    """The first day (``YYYY-MM-DD``, UTC) of the period each referral was received in."""
    received = Referral.received_at
    if dialect == "postgresql":
        return func.to_char(func.date_trunc(interval.value, received), "YYYY-MM-DD")
    if interval is Interval.DAY:
        return func.date(received)
    if interval is Interval.WEEK:
        return func.date(received, "weekday 0", "-6 days")
    if interval is Interval.MONTH:
        return func.date(received, "start of month")
    if interval is Interval.YEAR:
        return func.date(received, "start of year")
    months_into_quarter = (cast(func.strftime("%m", received), Integer) - 1) % 3
    return func.date(received, "start of month", func.printf("-%d months", months_into_quarter))


def seconds_between(dialect: str, later: Any, earlier: Any) -> ColumnElement[float]:
    """``later - earlier`` in seconds (NULL when either is NULL)."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", later - earlier), Float)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def milliseconds_rounded_seconds(dialect: str, later: Any, earlier: Any) -> ColumnElement[float]:
    """``later - earlier`` in seconds rounded to the millisecond, so bucket edges compare alike on both."""
    if dialect == "postgresql":
        return func.round(func.extract("epoch", later - earlier), 3)
    return func.round(seconds_between(dialect, later, earlier), 3)


def _count(condition: Any) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _action_time_bucket(dialect: str) -> ColumnElement[str]:
    """The time-to-decision bucket of a decided request (the last bucket also takes a missing clock)."""
    seconds = milliseconds_rounded_seconds(dialect, Referral.decided_at, Referral.received_at)
    bounded = [(name, bound) for name, bound in ACTION_TIME_BUCKETS if bound is not None]
    last = ACTION_TIME_BUCKETS[-1][0]
    return case(*((seconds <= bound, literal(name)) for name, bound in bounded), else_=literal(last))


def count_columns(dialect: str, now: datetime, linked: Any) -> list[Any]:
    """Every count of ``tables.COUNTS``, labelled with its name."""
    is_type = {name: Referral.type == value for value, name in TYPE_COUNTS.items()}
    is_removal_order = Referral.type == DocumentType.REMOVAL_ORDER.value
    is_preservation = Referral.type == DocumentType.PRESERVATION_REQUEST.value
    decided = Referral.status.in_(DECIDED_STATUSES)
    bucket = _action_time_bucket(dialect)
    was_extended = exists().where(
        ReferralStatus.referral_id == Referral.id,
        ReferralStatus.status == Status.PRESERVATION_EXTENDED.value,
    )
    outcomes = dict.fromkeys(OUTCOME_OF_STATUS.values())
    return [
        func.count().label("received"),
        *(_count(condition).label(name) for name, condition in is_type.items()),
        *(_count(Referral.status.in_(statuses_of(outcome))).label(outcome) for outcome in outcomes),
        _count(decided).label("decided"),
        _count(Referral.acknowledged_at.is_not(None)).label("acknowledged"),
        *(_count(and_(decided, bucket == name)).label(name) for name, _ in ACTION_TIME_BUCKETS),
        _count(
            and_(
                is_removal_order,
                Referral.status != Status.WITHDRAWN.value,
                or_(Referral.decided_at.is_not(None), Referral.deadline < now),
            )
        ).label("removal_orders_due"),
        _count(
            and_(
                is_removal_order,
                Referral.status.in_(ACTIONED_STATUSES),
                Referral.decided_at <= Referral.deadline,
            )
        ).label("removal_orders_within_deadline"),
        _count(overdue_condition(now)).label("overdue"),
        _count(and_(is_preservation, Referral.status.in_(_PRESERVING), Referral.preserved_until > now)).label(
            "preservations_active"
        ),
        # Nested CASE: the history is looked up only for preservations that ended.
        func.sum(
            case(
                (Referral.status == Status.PRESERVATION_EXTENDED.value, 1),
                (Referral.status.in_(_PRESERVATION_ENDED), case((was_extended, 1), else_=0)),
                else_=0,
            )
        ).label("preservations_extended"),
        _count(Referral.status == Status.EXPIRED.value).label("preservations_expired"),
        _count(Referral.status.in_(_COMPLAINED)).label("contested"),
        _count(Referral.status == Status.UPHELD.value).label("upheld"),
        _count(linked.c.referral_id.is_not(None)).label("overlaps"),
    ]


def _needs_issuer(query: StatsQuery) -> bool:
    return Dimension.COUNTRY in query.group_by or Dimension.COUNTRY in query.filters


def _scoped(statement: Any, query: StatsQuery, audience: Audience) -> Any:
    """``statement`` over the referrals in range, of the audience, matching the filters."""
    if _needs_issuer(query):
        statement = statement.join(Party, Party.id == Referral.issuer_id)
    conditions = [Referral.received_at >= query.start, Referral.received_at < query.end]
    if audience.issuer_id is not None:
        conditions.append(Referral.issuer_id == audience.issuer_id)
    if audience.addressee_id is not None:
        conditions.append(Referral.addressee_id == audience.addressee_id)
    for dimension, values in query.filters.items():
        conditions.append(dimension_column(dimension).in_(values))
    return statement.where(*conditions)


def _keys(dialect: str, query: StatsQuery, with_period: bool, with_group: bool) -> list[Any]:
    keys: list[Any] = []
    if with_period:
        keys.append(period_column(dialect, query.interval).label("period"))
    if with_group:
        keys.extend(
            dimension_column(dimension).label(f"by_{dimension.value}") for dimension in query.group_by
        )
    return keys


LineKey = tuple[date | None, tuple[str, ...]]


def _line_key(row: Any, with_period: bool, group_size: int) -> LineKey:
    values = list(row)
    period = date.fromisoformat(values.pop(0)) if with_period else None
    group = tuple("" if value is None else str(value) for value in values[:group_size])
    return period, group


async def counts(
    session: AsyncSession, *, query: StatsQuery, audience: Audience, now: datetime
) -> dict[LineKey, dict[str, int]]:
    """The counts of every period and group that has any referral."""
    dialect = session.get_bind().dialect.name
    linked = select(ReferralLink.referral_id).group_by(ReferralLink.referral_id).subquery("linked")
    keys = _keys(dialect, query, with_period=True, with_group=True)
    statement = (
        select(*keys, *count_columns(dialect, now, linked))
        .select_from(Referral)
        .outerjoin(linked, linked.c.referral_id == Referral.id)
    )
    statement = _scoped(statement, query, audience).group_by(*keys)
    result = await session.execute(statement)
    names = list(result.keys())[len(keys) :]
    table = {}
    for row in result:
        key = _line_key(row, with_period=True, group_size=len(query.group_by))
        table[key] = {name: int(value or 0) for name, value in zip(names, row[len(keys) :], strict=True)}
    return table


def _duration(dialect: str, kind: str) -> ColumnElement[float]:
    clock = Referral.acknowledged_at if kind == "ack" else Referral.decided_at
    return seconds_between(dialect, clock, Referral.received_at)


async def durations(
    session: AsyncSession, *, query: StatsQuery, audience: Audience, with_period: bool, with_group: bool
) -> dict[LineKey, dict[str, float | None]]:
    """Median and 90th percentile of the times to acknowledgement and to decision, per line of one level."""
    dialect = session.get_bind().dialect.name
    group_size = len(query.group_by) if with_group else 0
    figures: dict[LineKey, dict[str, float | None]] = {}
    for kind in DURATIONS:
        if dialect == "postgresql":
            found = await _percentiles_postgresql(
                session, query, audience, kind, with_period=with_period, with_group=with_group
            )
        else:
            found = await _percentiles_by_rank(
                session, query, audience, kind, with_period=with_period, with_group=with_group
            )
        for row_key, (median, p90) in found.items():
            key = _line_key(row_key, with_period, group_size)
            line = figures.setdefault(key, {})
            line[f"{kind}_median_seconds"] = round(median, 3)
            line[f"{kind}_p90_seconds"] = round(p90, 3)
    return figures


async def _percentiles_postgresql(
    session: AsyncSession,
    query: StatsQuery,
    audience: Audience,
    kind: str,
    *,
    with_period: bool,
    with_group: bool,
) -> dict[tuple[Any, ...], tuple[float, float]]:
    keys = _keys("postgresql", query, with_period, with_group)
    seconds = _duration("postgresql", kind)
    statement = select(
        *keys,
        func.percentile_cont(float(statmath.MEDIAN)).within_group(seconds),
        func.percentile_cont(float(statmath.P90)).within_group(seconds),
    ).select_from(Referral)
    statement = _scoped(statement, query, audience).where(seconds.is_not(None))
    if keys:
        statement = statement.group_by(*keys)
    result = await session.execute(statement)
    return {
        tuple(row[: len(keys)]): (float(row[-2]), float(row[-1]))
        for row in result
        if row[-2] is not None and row[-1] is not None
    }


async def _percentiles_by_rank(
    session: AsyncSession,
    query: StatsQuery,
    audience: Audience,
    kind: str,
    *,
    with_period: bool,
    with_group: bool,
) -> dict[tuple[Any, ...], tuple[float, float]]:
    keys = _keys("sqlite", query, with_period, with_group)
    seconds = _duration("sqlite", kind).label("seconds")
    timed = _scoped(select(*keys, seconds).select_from(Referral), query, audience).where(seconds.is_not(None))
    timed_rows = timed.subquery("timed")
    partition = [timed_rows.c[key.name] for key in keys]
    ranked = select(
        *partition,
        timed_rows.c.seconds,
        (func.row_number().over(partition_by=partition or None, order_by=timed_rows.c.seconds) - 1).label(
            "position"
        ),
        func.count().over(partition_by=partition or None).label("n"),
    ).subquery("ranked")
    wanted = []
    for quantile in (statmath.MEDIAN, statmath.P90):
        lower, has_upper = _rank_bounds(ranked.c.n, quantile)
        wanted.extend([ranked.c.position == lower, ranked.c.position == lower + has_upper])
    statement = select(
        *(ranked.c[key.name] for key in keys), ranked.c.n, ranked.c.position, ranked.c.seconds
    ).where(or_(*wanted))
    order_statistics: dict[tuple[Any, ...], dict[int, float]] = {}
    sizes: dict[tuple[Any, ...], int] = {}
    for row in await session.execute(statement):
        key = tuple(row[: len(keys)])
        sizes[key] = int(row[-3])
        order_statistics.setdefault(key, {})[int(row[-2])] = float(row[-1])
    return {key: _interpolated(sizes[key], values) for key, values in order_statistics.items()}


def _rank_bounds(size: Any, quantile: Fraction) -> tuple[Any, Any]:
    """SQL for the floor of ``(n - 1) * quantile`` and whether a ceiling above it is needed (0 or 1)."""
    scaled = (size - 1) * quantile.numerator
    lower = scaled // quantile.denominator
    return lower, case((scaled % quantile.denominator > 0, 1), else_=0)


def _interpolated(size: int, values: dict[int, float]) -> tuple[float, float]:
    results = []
    for quantile in (statmath.MEDIAN, statmath.P90):
        rank = statmath.percentile_rank(size, quantile)
        results.append(statmath.interpolate(values[rank.lower], values[rank.upper], rank.weight))
    return results[0], results[1]


async def party_names(session: AsyncSession, party_ids: Sequence[str]) -> dict[str, str]:
    """The names of the parties named in a table (ids and names are public in the party directory)."""
    if not party_ids:
        return {}
    rows = await session.execute(select(Party.id, Party.name).where(Party.id.in_(sorted(set(party_ids)))))
    return {str(party_id): str(name) for party_id, name in rows.all()}
