"""Liveness, readiness, and the refusal to start on a schema that is not at head."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from referral.app import create_app
from referral.config import Settings
from referral.core import migrations
from referral.core.migrations import SchemaOutOfDate


async def test_healthz(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_when_database_is_current(client: TestClient[Any, Any]) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "schema": migrations.head_revision()}


async def test_app_refuses_to_start_on_an_empty_database(empty_database_url: str, tmp_path: Path) -> None:
    runner = web.AppRunner(create_app(Settings(database_url=empty_database_url, var_dir=tmp_path)))
    with pytest.raises(SchemaOutOfDate, match="referral db upgrade"):
        await runner.setup()
    await runner.cleanup()


async def test_readyz_is_503_when_schema_is_behind(
    empty_database_url: str,
    tmp_path: Path,
    aiohttp_client: Callable[..., Coroutine[Any, Any, TestClient[Any, Any]]],
) -> None:
    settings = Settings(database_url=empty_database_url, var_dir=tmp_path, check_schema=False)
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/readyz")
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert "referral db upgrade" in body["detail"]
    assert response.headers["Retry-After"]


@pytest.mark.parametrize(
    "unreachable_url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/referral",
        "sqlite+aiosqlite:////nonexistent-directory/referral.sqlite3",
    ],
)
async def test_readyz_is_503_when_database_is_unreachable(
    unreachable_url: str,
    tmp_path: Path,
    aiohttp_client: Callable[..., Coroutine[Any, Any, TestClient[Any, Any]]],
) -> None:
    settings = Settings(database_url=unreachable_url, var_dir=tmp_path, check_schema=False)
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/readyz")
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    assert (await response.json())["detail"] == "the database is unreachable"
    assert (await client.get("/healthz")).status == 200
