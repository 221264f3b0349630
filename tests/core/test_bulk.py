"""Rows written from array parameters (``unnest``) on PostgreSQL: stored whole, or refused whole."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.exc import DBAPIError

from referral.config import Settings
from referral.core.bulk import unnest_insert, unnest_parameters
from referral.core.db import UTCDateTime, create_engine

_metadata = MetaData()
_probe = Table(
    "bulk_probe",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(8)),
    Column("data", JSON),
    Column("at", UTCDateTime()),
)


async def test_rows_from_arrays_are_stored_as_given(postgres_databases: Any) -> None:
    engine = create_engine(Settings(database_url=postgres_databases.copy()))
    moment = datetime(2026, 12, 3, 9, 30, 0, 123456, tzinfo=UTC)
    rows = [
        {"id": 1, "code": "12345678", "data": {"a": [1, "é"]}, "at": moment},
        {"id": 2, "code": None, "data": None, "at": None},
    ]
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_metadata.create_all)
            await connection.execute(
                text(unnest_insert(_probe, prefix="p_")), unnest_parameters(_probe, rows, prefix="p_")
            )
            stored = (await connection.execute(select(_probe).order_by(_probe.c.id))).mappings().all()
    finally:
        await engine.dispose()
    assert [dict(row) for row in stored] == rows


async def test_a_value_too_long_for_its_column_is_refused_not_cut_short(postgres_databases: Any) -> None:
    """The arrays are cast to the unbounded type: ``CAST(... AS VARCHAR(8)[])`` would have stored the first
    eight characters of a nine-character value without an error."""
    engine = create_engine(Settings(database_url=postgres_databases.copy()))
    rows = [
        {"id": 1, "code": "fits", "data": None, "at": None},
        {"id": 2, "code": "123456789", "data": None, "at": None},
    ]
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_metadata.create_all)
        with pytest.raises(DBAPIError, match="too long"):
            async with engine.begin() as connection:
                await connection.execute(
                    text(unnest_insert(_probe, prefix="p_")), unnest_parameters(_probe, rows, prefix="p_")
                )
        async with engine.connect() as connection:
            assert (await connection.execute(select(_probe.c.id))).all() == []
    finally:
        await engine.dispose()
