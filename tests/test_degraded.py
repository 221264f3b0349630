"""Degraded mode: while PostgreSQL is unreachable the API answers 503 problem+json quickly (no hanging
requests, no exhausted pool), readiness says so, and everything recovers by itself when it returns. On SQLite
a request that cannot get the process's one connection in time answers the same way.

The database "goes down" behind a TCP proxy the test controls, so the shared server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from referral.app import create_app
from referral.config import Settings
from referral.core import db
from referral.core.appkeys import sessionmaker_key
from tests.auth.factories import bearer, make_party
from tests.referrals.test_api import referral_claims, submit


class Proxy:
    """Forwards TCP to a target; ``down()`` drops every connection and refuses new ones until ``up()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.available = True
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.available:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        self.writers -= {writer, upstream_writer}

    def down(self) -> None:
        self.available = False
        for writer in list(self.writers):
            writer.transport.abort()

    def up(self) -> None:
        self.available = True

    async def close(self) -> None:
        self.down()
        assert self.server is not None
        self.server.close()


async def test_the_api_answers_503_fast_while_the_database_is_down_and_recovers(
    backend: str, settings: Settings, aiohttp_client: Any
) -> None:
    if backend != "postgresql":
        pytest.skip("an embedded SQLite database cannot be unreachable")
    url = make_url(settings.database_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = create_app(
        settings.model_copy(
            update={
                "database_url": proxied,
                "run_background_tasks": False,
                "db_pool_timeout": 2.0,
                "db_statement_timeout": 3.0,
                "access_token_recheck_seconds": 0.0,
            }
        )
    )
    client = await aiohttp_client(app)
    try:
        authority = await make_party(client, kind="authority")
        provider = await make_party(client, kind="provider")
        headers = await bearer(client, authority)
        status, _body, _compact = await submit(client, authority, referral_claims(authority, provider))
        assert status == 201

        proxy.down()
        async with asyncio.timeout(30):  # a hanging request fails the test here
            answers = await asyncio.gather(*(client.get("/v1/referrals", headers=headers) for _ in range(40)))
            compact_status, _body, _compact = await submit(
                client, authority, referral_claims(authority, provider), headers=headers
            )
            ready = await client.get("/readyz")
            alive = await client.get("/healthz")
        assert {answer.status for answer in answers} == {503}
        problem = await answers[0].json()
        assert answers[0].content_type == "application/problem+json"
        assert problem["type"].endswith("/service-unavailable")
        assert answers[0].headers["Retry-After"]
        assert compact_status == 503
        assert ready.status == 503
        assert alive.status == 200

        proxy.up()
        async with asyncio.timeout(30):
            while (await client.get("/readyz")).status != 200:  # noqa: ASYNC110 - polling over HTTP
                await asyncio.sleep(0.2)
            response = await client.get("/v1/referrals", headers=headers)
        assert response.status == 200
        assert len((await response.json())["referrals"]) == 1, "the refused submission left nothing"
    finally:
        await proxy.close()


async def test_on_sqlite_a_request_that_waits_too_long_for_the_connection_answers_503(
    backend: str, settings: Settings, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "sqlite":
        pytest.skip("only SQLite has one connection per process")
    monkeypatch.setattr(db, "SQLITE_QUEUE_TIMEOUT_SECONDS", 0.5)
    client = await aiohttp_client(create_app(settings.model_copy(update={"run_background_tasks": False})))
    operator = await make_party(client, kind="operator")
    headers = await bearer(client, operator)
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as stuck:  # something holds the process's one connection
        await stuck.execute(select(1))
        async with asyncio.timeout(10):
            answer = await client.get("/v1/parties", headers=headers)
            ready = await client.get("/readyz")
    assert answer.status == 503
    assert answer.content_type == "application/problem+json"
    assert (await answer.json())["type"].endswith("/service-unavailable")
    assert answer.headers["Retry-After"]
    assert ready.status == 503
    assert (await client.get("/v1/parties", headers=headers)).status == 200
