"""Timestamps are aware UTC on the way out on both backends, whatever zone they went in with; on SQLite one
connection per process, served in turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from referral.app import create_app
from referral.config import Settings
from referral.core import db
from referral.core.appkeys import engine_key
from referral.core.db import NestedSessionError, UTCDateTime, create_engine, create_sessionmaker
from referral.core.ids import new_id
from tests.auth.factories import TestParty, bearer, make_party


async def test_utc_datetime_round_trips(database_url: str) -> None:
    metadata = MetaData()
    table = Table("tz_probe", metadata, Column("id", Integer, primary_key=True), Column("at", UTCDateTime()))
    engine = create_engine(Settings(database_url=database_url))
    moment = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.execute(insert(table).values(id=1, at=moment))
            stored = (await connection.execute(select(table.c.at))).scalar_one()
    finally:
        await engine.dispose()
    assert stored == moment
    assert stored.tzinfo is not None
    assert stored.utcoffset() == timedelta(0)
    assert stored == datetime(2026, 3, 28, 20, 0, 15, 123456, tzinfo=UTC)


async def test_naive_datetimes_are_refused(database_url: str) -> None:
    metadata = MetaData()
    table = Table("tz_probe", metadata, Column("id", Integer, primary_key=True), Column("at", UTCDateTime()))
    engine = create_engine(Settings(database_url=database_url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            with pytest.raises(Exception, match="naive datetime"):
                await connection.execute(insert(table).values(id=1, at=datetime(2026, 1, 1)))
    finally:
        await engine.dispose()


def test_ids_are_uuid7_and_sort_by_creation() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(value[14] == "7" and value[19] in "89ab" for value in ids)
    assert len(set(ids)) == 1000
    earlier = new_id()
    time.sleep(0.002)
    assert new_id() > earlier


async def test_concurrent_writers_through_the_app_all_commit(
    backend: str,
    settings: Settings,
    aiohttp_client: Callable[..., Coroutine[Any, Any, TestClient[Any, Any]]],
) -> None:
    """Token requests and webhook registrations all at once. On SQLite their transactions take turns on the
    process's one connection (several pooled connections would fight for SQLite's write lock in its busy
    handler, and some requests were refused with "database is locked"); every one of them commits."""
    app = create_app(settings.model_copy(update={"webhook_allow_private": True}))
    client = await aiohttp_client(app)
    providers = [await make_party(client, kind="provider") for _ in range(3)]
    checked_out = [0]
    most_checked_out = [0]

    def on_checkout(*_: Any) -> None:
        checked_out[0] += 1
        most_checked_out[0] = max(most_checked_out[0], checked_out[0])

    def on_checkin(*_: Any) -> None:
        checked_out[0] -= 1

    pool_events = app[engine_key].sync_engine
    event.listen(pool_events, "checkout", on_checkout)
    event.listen(pool_events, "checkin", on_checkin)

    async def register(party: TestParty, number: int) -> tuple[int, str]:
        headers = await bearer(client, party)
        response = await client.post(
            "/v1/webhooks", json={"url": f"http://127.0.0.1:9/hooks/{number}"}, headers=headers
        )
        return response.status, await response.text()

    answers = await asyncio.gather(*(register(party, n) for party in providers for n in range(15)))
    refused = [body for status, body in answers if status != 201]
    assert not refused, refused
    for party in providers:
        listed = await client.get("/v1/webhooks", headers=await bearer(client, party))
        assert len((await listed.json())["webhooks"]) == 15
    if backend == "sqlite":
        assert most_checked_out == [1], "SQLite transactions of one process must take turns on one connection"


@pytest.fixture
async def sqlite_sessionmaker(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'pool.sqlite3'}"))
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def test_sqlite_connection_goes_to_waiters_in_the_order_they_asked(
    sqlite_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    served: list[str] = []

    async def transaction(name: str) -> None:
        async with sqlite_sessionmaker.begin() as session:
            await session.execute(select(1))
            served.append(name)

    holder = sqlite_sessionmaker()
    await holder.execute(select(1))
    waiting = [asyncio.create_task(transaction(f"waiter {n}")) for n in range(6)]
    await asyncio.sleep(0.05)  # every waiter is queued (the order does not depend on how long this is)
    waiting[2].cancel()
    await holder.close()
    # Asking again in the same step that gave the connection back: behind those who were waiting (an
    # asyncio.Queue would let this task take it, and send the waiter already woken for it to the back).
    await transaction("asked again")
    await asyncio.gather(*waiting, return_exceptions=True)
    assert served == ["waiter 0", "waiter 1", "waiter 3", "waiter 4", "waiter 5", "asked again"]


async def test_a_session_opened_inside_another_on_sqlite_is_refused_not_left_waiting(
    sqlite_sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sqlite_sessionmaker() as outer:
        await outer.execute(select(1))
        async with sqlite_sessionmaker() as inner:
            with pytest.raises(NestedSessionError, match="would wait for itself"):
                await inner.execute(select(1))
        assert (await outer.execute(select(1))).scalar_one() == 1


async def test_an_idle_postgres_connection_that_died_is_replaced_not_failed(
    postgres_databases: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection whose server side went away while it sat idle is pinged at checkout and
    replaced; one in steady use is handed out without a ping (no extra round trips per transaction)."""
    url = postgres_databases.copy()
    engine = create_engine(Settings(database_url=url, db_pool_size=1))
    pings: list[object] = []
    try:
        async with engine.connect() as connection:
            first_pid = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            adapted = type((await connection.get_raw_connection()).dbapi_connection)
        ping = adapted.ping

        def counted_ping(self: Any) -> None:
            pings.append(first_pid)
            ping(self)

        monkeypatch.setattr(adapted, "ping", counted_ping)
        async with engine.connect() as connection:  # used a moment ago: no ping
            assert (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one() == first_pid
        assert pings == []

        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
        other = create_engine(Settings(database_url=url))
        try:
            async with other.connect() as killer:
                await killer.exec_driver_sql(f"SELECT pg_terminate_backend({int(first_pid)})")
        finally:
            await other.dispose()
        await asyncio.sleep(0.2)
        async with engine.connect() as connection:
            second_pid = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        assert pings == [first_pid]
        assert second_pid != first_pid
    finally:
        await engine.dispose()
        postgres_databases.drop(url)
