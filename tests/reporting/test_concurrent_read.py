"""On PostgreSQL a statistics read counts and computes durations at the same time, on two connections; a
failure of either is the read's failure, as it is, and leaves no query running or connection held."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from referral.config import Settings
from referral.core.db import create_engine, create_sessionmaker
from referral.reporting import queries
from referral.reporting.params import StatsQuery
from referral.reporting.periods import Interval

NOW = datetime(2026, 6, 1, tzinfo=UTC)
QUERY = StatsQuery(start=NOW - timedelta(days=365), end=NOW, interval=Interval.MONTH)
LEVELS = [(True, False), (False, False)]


@pytest.fixture
def postgresql_url(backend: str, database_url: str) -> str:
    if backend != "postgresql":
        pytest.skip("the concurrent read is PostgreSQL's (SQLite has one connection per process)")
    return database_url


async def test_both_queries_run_at_once_on_two_connections(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(Settings(database_url=postgresql_url))
    both_running = asyncio.Barrier(2)
    counted, timed = queries.counts, queries.durations

    async def counts(session: AsyncSession, **arguments: Any) -> Any:
        await asyncio.wait_for(both_running.wait(), 5)
        return await counted(session, **arguments)

    async def durations(session: AsyncSession, **arguments: Any) -> Any:
        await asyncio.wait_for(both_running.wait(), 5)
        return await timed(session, **arguments)

    monkeypatch.setattr(queries, "counts", counts)
    monkeypatch.setattr(queries, "durations", durations)
    try:
        async with create_sessionmaker(engine)() as session:
            row_counts, found = await queries.counts_and_durations(
                session, query=QUERY, audience=queries.Audience(), now=NOW, levels=LEVELS
            )
        assert row_counts == {}
        assert found == {}
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_a_failed_count_stops_the_durations_and_is_raised_as_it_is(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(Settings(database_url=postgresql_url))
    started, stopped = asyncio.Event(), asyncio.Event()

    async def counts(session: AsyncSession, **_arguments: Any) -> Any:
        await asyncio.wait_for(started.wait(), 5)
        raise RuntimeError("the count failed")

    async def durations(session: AsyncSession, **_arguments: Any) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    monkeypatch.setattr(queries, "counts", counts)
    monkeypatch.setattr(queries, "durations", durations)
    try:
        async with create_sessionmaker(engine)() as session:
            with pytest.raises(RuntimeError, match="the count failed"):
                await queries.counts_and_durations(
                    session, query=QUERY, audience=queries.Audience(), now=NOW, levels=LEVELS
                )
        assert stopped.is_set()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_both_connections_read_with_the_stats_memory_for_their_transaction_only(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each query of a read runs with the statistics' settings (memory for sorts and hash tables, a plan for
    its own values), set in one round trip; they end with the read's transactions."""
    engine = create_engine(Settings(database_url=postgresql_url))
    seen: dict[str, tuple[str, ...]] = {}
    counted, timed = queries.counts, queries.durations
    shown = text(
        "SELECT current_setting('work_mem'), current_setting('hash_mem_multiplier'), "
        "current_setting('plan_cache_mode')"
    )

    async def counts(session: AsyncSession, **arguments: Any) -> Any:
        seen["counts"] = tuple((await session.execute(shown)).one())
        return await counted(session, **arguments)

    async def durations(session: AsyncSession, **arguments: Any) -> Any:
        seen["durations"] = tuple((await session.execute(shown)).one())
        return await timed(session, **arguments)

    monkeypatch.setattr(queries, "counts", counts)
    monkeypatch.setattr(queries, "durations", durations)
    try:
        async with create_sessionmaker(engine)() as session:
            before = tuple((await session.execute(shown)).one())
            await session.commit()
            await queries.prepare(session)  # as compute_stats does before the read
            await queries.counts_and_durations(
                session, query=QUERY, audience=queries.Audience(), now=NOW, levels=LEVELS
            )
            await session.commit()
            after = tuple((await session.execute(shown)).one())
        stats = (queries.WORK_MEM, "4", "force_custom_plan")
        assert seen == {"counts": stats, "durations": stats}
        assert before != stats
        assert after == before
    finally:
        await engine.dispose()
