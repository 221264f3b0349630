"""The bare-limit reference: the least a signed submission can cost on this machine and database.

``python -m bench.bare --port P --database-url URL --keys KEYS.json [--workers N]``: an aiohttp app with one
route, ``POST /v1/referrals``, that reads the compact JWS, parses its JSON header and payload, verifies the
Ed25519 signature with the key its ``kid`` names (keys imported once at start), and INSERTs one row in its
own table of the same database: asyncpg with a pool on PostgreSQL (autocommit: one round trip), aiosqlite with
one connection and ``INSERT`` + ``COMMIT`` under a lock on SQLite (WAL, ``synchronous=NORMAL``, like the
service). Nothing else: no tokens, no audit, no events. The ratio full / bare is the figure of merit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
    uvloop = None

TABLE = "bench_bare_submissions"
CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(36) PRIMARY KEY, iss VARCHAR(36) NOT NULL, "
    "jti VARCHAR(128) NOT NULL, jws TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL)"
)

Insert = Callable[[tuple[Any, ...]], Awaitable[None]]
insert_key = web.AppKey("insert_key", object)
keys_key = web.AppKey("keys_key", dict)


def _b64decode(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def load_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Public Ed25519 keys by kid, from ``{"kid": {"x": "<base64url>"}}``."""
    document = json.loads(path.read_text())
    return {
        kid: Ed25519PublicKey.from_public_bytes(_b64decode(jwk["x"].encode()))
        for kid, jwk in document.items()
    }


async def submit(request: web.Request) -> web.Response:
    """Parse, verify, insert, answer."""
    compact = await request.read()
    try:
        header_part, payload_part, signature_part = compact.split(b".")
        header = json.loads(_b64decode(header_part))
        payload = json.loads(_b64decode(payload_part))
        key = request.app[keys_key][header["kid"]]
        key.verify(_b64decode(signature_part), header_part + b"." + payload_part)
    except (ValueError, KeyError, InvalidSignature):
        return web.json_response({"error": "bad document"}, status=422)
    submission_id = str(uuid.uuid4())
    insert: Any = request.app[insert_key]
    await insert((submission_id, payload["iss"], payload["jti"], compact.decode("ascii"), time.time()))
    return web.json_response({"id": submission_id}, status=201)


async def _postgres(app: web.Application, url: str) -> AsyncIterator[None]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=10, max_size=20)
    statement = f"INSERT INTO {TABLE} (id, iss, jti, jws, received_at) VALUES ($1, $2, $3, $4, $5)"

    async def insert(row: tuple[Any, ...]) -> None:
        await pool.execute(statement, *row)

    app[insert_key] = insert
    yield
    await pool.close()


async def _sqlite(app: web.Application, url: str) -> AsyncIterator[None]:
    connection = await aiosqlite.connect(url.split(":///", 1)[1], isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
        await connection.execute(f"PRAGMA {pragma}")
    lock = asyncio.Lock()
    statement = f"INSERT INTO {TABLE} (id, iss, jti, jws, received_at) VALUES (?, ?, ?, ?, ?)"

    async def insert(row: tuple[Any, ...]) -> None:
        async with lock:  # one transaction per request, like the service
            await connection.execute("BEGIN")
            await connection.execute(statement, row)
            await connection.execute("COMMIT")

    app[insert_key] = insert
    yield
    await connection.close()


async def prepare(url: str) -> None:
    """Create the reference table (once, before the workers start)."""
    if url.startswith("sqlite"):
        async with aiosqlite.connect(url.split(":///", 1)[1]) as connection:
            await connection.execute(CREATE)
            await connection.commit()
        return
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(CREATE)
    finally:
        await connection.close()


def create_app(url: str, keys: dict[str, Ed25519PublicKey]) -> web.Application:
    """The reference app on ``url`` with the signers' ``keys``."""
    app = web.Application()
    app[keys_key] = keys

    async def database(app: web.Application) -> AsyncIterator[None]:
        context = _sqlite(app, url) if url.startswith("sqlite") else _postgres(app, url)
        async for _ in context:
            yield

    app.cleanup_ctx.append(database)
    app.router.add_post("/v1/referrals", submit)
    app.router.add_get("/healthz", lambda _request: _ok())
    return app


async def _ok() -> web.Response:
    return web.Response(text="ok")


def _serve(url: str, keys: dict[str, Ed25519PublicKey], host: str, port: int) -> None:
    loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
    web.run_app(create_app(url, keys), host=host, port=port, reuse_port=True, print=None, loop=loop)


def main(argv: list[str] | None = None) -> int:
    """Serve the reference app (``--workers`` processes sharing the port with SO_REUSEPORT)."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--keys", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    keys = load_keys(args.keys)
    asyncio.run(prepare(args.database_url))
    if args.workers <= 1:
        _serve(args.database_url, keys, args.host, args.port)
        return 0
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            _serve(args.database_url, keys, args.host, args.port)
            os._exit(0)
        children.append(pid)

    def forward(signal_number: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signal_number)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
