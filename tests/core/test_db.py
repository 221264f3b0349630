"""Timestamps are aware UTC on the way out on both backends, whatever zone they went in with."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select

from referral.config import Settings
from referral.core.db import UTCDateTime, create_engine
from referral.core.ids import new_id


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
