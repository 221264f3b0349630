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

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any, Final

from sqlalchemy import Float, Integer, and_, case, cast, func, literal, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
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
ACTION_TIME_NAMES: Final = tuple(name for name, _ in ACTION_TIME_BUCKETS)


@dataclass(frozen=True)
class Audience:
    """Whose requests the figures cover (None: every party's) and whether small cells are suppressed."""

    issuer_id: str | None = None
    addressee_id: str | None = None
    suppressed: bool = False


# Memory for one statistics read's hash tables and sorts on PostgreSQL (per sort or hash, per transaction):
# the default 4 MB spills a year's durations to disk and turns hash aggregation into sorting.
WORK_MEM: Final = "64MB"
# The settings of a statistics transaction on PostgreSQL. Every statement planned for its values: after five
# runs on a connection PostgreSQL may switch to a generic plan, in which the period's bounds are unknown (it
# estimated a year as a thousand rows and sorted instead of hashing) and the history's status is a parameter
# that cannot match the partial index of extended preservations (it read the whole history); planning takes
# a millisecond or two of queries that take hundreds.
_STATS_SETTINGS: Final = {
    "work_mem": WORK_MEM,
    "hash_mem_multiplier": "4",
    "plan_cache_mode": "force_custom_plan",
}
_PREPARE = text(
    "SELECT " + ", ".join(f"set_config(:name_{n}, :value_{n}, true)" for n in range(len(_STATS_SETTINGS)))
)
_PREPARE_PARAMETERS: Final = {
    key: value
    for n, (name, setting) in enumerate(_STATS_SETTINGS.items())
    for key, value in ((f"name_{n}", name), (f"value_{n}", setting))
}


async def prepare(session: AsyncSession) -> None:
    """Set up the session's transaction for the statistics queries that follow (one round trip)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_PREPARE, _PREPARE_PARAMETERS)


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
    """``later - earlier`` in seconds (NULL when either is NULL), as a double: on PostgreSQL ``date_part`` of
    the interval, a third of the cost per row of ``extract`` (numeric) and the same to far below a
    millisecond (SQLite's ``julianday`` is a double too)."""
    if dialect == "postgresql":
        return cast(func.date_part("epoch", later - earlier), Float)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def milliseconds_rounded_seconds(dialect: str, later: Any, earlier: Any) -> ColumnElement[float]:
    """``later - earlier`` in seconds rounded to the millisecond, so bucket edges compare alike on both."""
    if dialect == "postgresql":
        return func.round(func.extract("epoch", later - earlier), 3)
    return func.round(seconds_between(dialect, later, earlier), 3)


def _action_time_bucket(dialect: str) -> ColumnElement[int]:
    """The index in ``ACTION_TIME_BUCKETS`` of the time from receipt to decision (the last bucket also takes a
    missing clock). Bucket edges compare the time rounded to the millisecond on both databases: on PostgreSQL
    as an exact interval comparison (``round(x, 3) <= b`` is ``x < b + 0.0005 s`` for microsecond times),
    which is much cheaper per row than numeric rounding."""
    bounded = [bound for _, bound in ACTION_TIME_BUCKETS if bound is not None]
    if dialect == "postgresql":
        elapsed = Referral.decided_at - Referral.received_at
        within = [elapsed < timedelta(seconds=bound, microseconds=500) for bound in bounded]
    else:
        seconds = milliseconds_rounded_seconds(dialect, Referral.decided_at, Referral.received_at)
        within = [seconds <= bound for bound in bounded]
    return case(*((condition, literal(index)) for index, condition in enumerate(within)), else_=len(bounded))


def _facts(dialect: str, now: datetime) -> list[Any]:
    """What the counts need to know of each referral, as a few low-cardinality columns: referrals are first
    grouped by these, which is cheap per row, and every count is then a sum over those groups (a count
    expression per figure and referral cost PostgreSQL about 2 µs a referral). Overlaps are counted apart,
    from the links (``_overlaps``)."""
    # The preservations ever extended, read once (a hashed subplan). PostgreSQL priced a correlated EXISTS
    # here as a scan of the history per referral once the history held a few thousand rows, and for that
    # cost chose a parallel, sort-based plan for the counts: 1.8-2.3 s for the observer's on a million
    # referrals against 0.7-0.8 s with an empty history.
    was_extended = Referral.id.in_(
        select(ReferralStatus.referral_id).where(ReferralStatus.status == Status.PRESERVATION_EXTENDED.value)
    )
    return [
        Referral.type.label("type"),
        Referral.status.label("status"),
        Referral.acknowledged_at.is_not(None).label("acknowledged"),
        _action_time_bucket(dialect).label("bucket"),
        or_(Referral.decided_at.is_not(None), Referral.deadline < now).label("due"),
        (Referral.decided_at <= Referral.deadline).label("in_time"),
        overdue_condition(now).label("overdue"),
        (Referral.preserved_until > now).label("preserving"),
        case((Referral.status.in_(_PRESERVATION_ENDED), was_extended), else_=False).label("extended"),
    ]


def count_columns(facts: Any) -> list[Any]:
    """Every count of ``tables.COUNTS`` but ``overlaps`` over the grouped ``facts`` (their ``n``), labelled
    with its name."""
    f = facts.c

    def total(*conditions: Any) -> ColumnElement[Any]:
        return func.coalesce(func.sum(f.n).filter(and_(*conditions)) if conditions else func.sum(f.n), 0)

    decided = f.status.in_(DECIDED_STATUSES)
    is_removal_order = f.type == DocumentType.REMOVAL_ORDER.value
    is_preservation = f.type == DocumentType.PRESERVATION_REQUEST.value
    outcomes = dict.fromkeys(OUTCOME_OF_STATUS.values())
    return [
        total().label("received"),
        *(total(f.type == value).label(name) for value, name in TYPE_COUNTS.items()),
        *(total(f.status.in_(statuses_of(outcome))).label(outcome) for outcome in outcomes),
        total(decided).label("decided"),
        total(f.acknowledged).label("acknowledged"),
        *(total(decided, f.bucket == index).label(name) for index, name in enumerate(ACTION_TIME_NAMES)),
        total(is_removal_order, f.status != Status.WITHDRAWN.value, f.due).label("removal_orders_due"),
        total(is_removal_order, f.status.in_(ACTIONED_STATUSES), f.in_time).label(
            "removal_orders_within_deadline"
        ),
        total(f.overdue).label("overdue"),
        total(is_preservation, f.status.in_(_PRESERVING), f.preserving).label("preservations_active"),
        total(
            or_(
                f.status == Status.PRESERVATION_EXTENDED.value,
                and_(f.status.in_(_PRESERVATION_ENDED), f.extended),
            )
        ).label("preservations_extended"),
        total(f.status == Status.EXPIRED.value).label("preservations_expired"),
        total(f.status.in_(_COMPLAINED)).label("contested"),
        total(f.status == Status.UPHELD.value).label("upheld"),
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


def _keys(
    dialect: str, query: StatsQuery, with_period: bool, with_group: bool, *, truncated: bool = False
) -> list[Any]:
    """The period (``truncated``: as a ``timestamptz`` on PostgreSQL, formatted later) and group columns."""
    keys: list[Any] = []
    if with_period:
        if truncated and dialect == "postgresql":
            keys.append(func.date_trunc(query.interval.value, Referral.received_at).label("period"))
        else:
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
    keys = _keys(dialect, query, with_period=True, with_group=True, truncated=True)
    each = select(*keys, *_facts(dialect, now)).select_from(Referral)
    each_referral = _scoped(each, query, audience).subquery("each_referral")
    facts = select(*each_referral.c, func.count().label("n")).group_by(*each_referral.c).subquery("facts")
    line = [facts.c[key.name] for key in keys]
    shown = [_period_text(dialect, line[0]), *line[1:]]
    result = await session.execute(select(*shown, *count_columns(facts)).group_by(*line))
    names = list(result.keys())[len(keys) :]
    table = {}
    for row in result:
        key = _line_key(row, with_period=True, group_size=len(query.group_by))
        table[key] = {name: int(value or 0) for name, value in zip(names, row[len(keys) :], strict=True)}
        table[key]["overlaps"] = 0
    for row in await session.execute(_overlaps(dialect, query, audience, keys)):
        table[_line_key(row, with_period=True, group_size=len(query.group_by))]["overlaps"] = int(row[-1])
    return table


def _overlaps(dialect: str, query: StatsQuery, audience: Audience, keys: list[Any]) -> Any:
    """The referrals in range that overlap another, per line: driven by the links (far fewer than referrals,
    so the referrals are not all joined to them)."""
    linked = select(ReferralLink.referral_id).group_by(ReferralLink.referral_id).subquery("linked")
    each = select(*keys).select_from(linked).join(Referral, Referral.id == linked.c.referral_id)
    each_referral = _scoped(each, query, audience).subquery("each_linked")
    line = list(each_referral.c)
    return select(_period_text(dialect, line[0]), *line[1:], func.count()).group_by(*line)


def _period_text(dialect: str, period: Any) -> Any:
    """A period column of ``_keys(..., truncated=True)`` as ``YYYY-MM-DD``."""
    return func.to_char(period, "YYYY-MM-DD") if dialect == "postgresql" else period


Level = tuple[bool, bool]  # (with_period, with_group): which lines of the table a figure is computed for


async def counts_and_durations(
    session: AsyncSession, *, query: StatsQuery, audience: Audience, now: datetime, levels: Sequence[Level]
) -> tuple[dict[LineKey, dict[str, int]], dict[LineKey, dict[str, float | None]]]:
    """``counts`` and ``durations``; on PostgreSQL at the same time, the durations on a second connection of
    the session's engine (two cores instead of one: the two queries take about as long as each other). Each
    query reads its own snapshot, as consecutive statements of one transaction would at READ COMMITTED."""
    engine = session.bind
    if session.get_bind().dialect.name != "postgresql" or not isinstance(engine, AsyncEngine):
        return (
            await counts(session, query=query, audience=audience, now=now),
            await durations(session, query=query, audience=audience, levels=levels),
        )
    async with AsyncSession(engine) as other:
        await prepare(other)
        found = asyncio.create_task(durations(other, query=query, audience=audience, levels=levels))
        try:
            row_counts = await counts(session, query=query, audience=audience, now=now)
        except BaseException:
            found.cancel()
            await asyncio.gather(found, return_exceptions=True)
            raise
        return row_counts, await found


def _duration(dialect: str, kind: str) -> ColumnElement[float]:
    clock = Referral.acknowledged_at if kind == "ack" else Referral.decided_at
    return seconds_between(dialect, clock, Referral.received_at)


async def durations(
    session: AsyncSession, *, query: StatsQuery, audience: Audience, levels: Sequence[Level]
) -> dict[LineKey, dict[str, float | None]]:
    """Median and 90th percentile of the times to acknowledgement and to decision, per line of each level."""
    dialect = session.get_bind().dialect.name
    found: dict[tuple[Level, str], dict[tuple[Any, ...], tuple[float, float]]] = {}
    if dialect == "postgresql":
        found = await _percentiles_postgresql(session, query, audience, levels)
    else:
        for with_period, with_group in levels:
            for kind in DURATIONS:
                found[(with_period, with_group), kind] = await _percentiles_by_rank(
                    session, query, audience, kind, with_period=with_period, with_group=with_group
                )
    figures: dict[LineKey, dict[str, float | None]] = {}
    for ((with_period, with_group), kind), lines in found.items():
        group_size = len(query.group_by) if with_group else 0
        for row_key, (median, p90) in lines.items():
            line = figures.setdefault(_line_key(row_key, with_period, group_size), {})
            line[f"{kind}_median_seconds"] = round(median, 3)
            line[f"{kind}_p90_seconds"] = round(p90, 3)
    return figures


async def _percentiles_postgresql(
    session: AsyncSession, query: StatsQuery, audience: Audience, levels: Sequence[Level]
) -> dict[tuple[Level, str], dict[tuple[Any, ...], tuple[float, float]]]:
    """Every level and both durations in one pass: ``GROUPING SETS``, and ``percentile_cont`` of both
    quantiles at once per duration (one sort of each line's durations instead of two)."""
    keys = _keys("postgresql", query, with_period=True, with_group=True, truncated=True)
    durations = [_duration("postgresql", kind).label(kind) for kind in DURATIONS]
    each_referral = _scoped(select(*keys, *durations).select_from(Referral), query, audience).subquery("each")
    everything = [each_referral.c[key.name] for key in keys]
    # Positions in ``everything`` of each level's keys (the period first, then the groups).
    groups = range(1, len(everything))
    sets = {level: [*([0] if level[0] else []), *(groups if level[1] else [])] for level in levels}
    fractions = array([float(statmath.MEDIAN), float(statmath.P90)])
    quantiles = [
        func.percentile_cont(fractions, type_=ARRAY(Float)).within_group(each_referral.c[kind])
        for kind in DURATIONS
    ]
    shown = [_period_text("postgresql", everything[0]), *everything[1:]]
    statement = select(*shown, func.grouping(*everything), *quantiles).group_by(
        func.grouping_sets(*(tuple_(*(everything[index] for index in keys)) for keys in sets.values()))
    )
    # grouping(...) has a bit set for each key a row is not grouped by, the first key the highest.
    width = len(everything)
    level_of = {
        sum(1 << (width - 1 - index) for index in range(width) if index not in keys): level
        for level, keys in sets.items()
    }
    found: dict[tuple[Level, str], dict[tuple[Any, ...], tuple[float, float]]] = {
        (level, kind): {} for level in levels for kind in DURATIONS
    }
    for row in await session.execute(statement):
        level = level_of[row[len(everything)]]
        line = tuple(row[index] for index in sets[level])
        for kind, values in zip(DURATIONS, row[len(everything) + 1 :], strict=True):
            if values is not None and None not in values:
                found[level, kind][line] = (float(values[0]), float(values[1]))
    return found


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
