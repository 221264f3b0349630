"""Test infrastructure: every database-backed test runs on SQLite and on PostgreSQL.

Each test run creates its own PostgreSQL template database (migrated to head once) on 127.0.0.1:5432 as
user ``postgres`` (``REFERRAL_TEST_POSTGRES_URL`` overrides); each test gets a copy of it, dropped after.
Without a reachable PostgreSQL the PostgreSQL half is skipped, unless ``REFERRAL_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import make_url

from referral.app import create_app
from referral.config import Settings
from referral.core import migrations
from tests.auth.factories import TestParty, make_party

T = TypeVar("T")

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgresql"]


def run_blocking(coroutine_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on its own loop in another thread (safe inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coroutine_factory())).result()


def postgres_admin_url() -> str:
    """The PostgreSQL URL tests use to create and drop their databases."""
    return os.environ.get("REFERRAL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_url_for(database: str) -> str:
    """The admin URL pointed at another database."""
    return make_url(postgres_admin_url()).set(database=database).render_as_string(hide_password=False)


async def _admin_execute(*statements: str) -> None:
    url = make_url(postgres_admin_url())
    connection = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=5,
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


class PostgresDatabases:
    """Creates the per-run template and per-test copies, and drops them all at the end."""

    def __init__(self) -> None:
        self.prefix = f"referral_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_template"
        self.created: list[str] = []

    def create_template(self) -> None:
        run_blocking(lambda: _admin_execute(f'CREATE DATABASE "{self.template}"'))
        self.created.append(self.template)
        migrations.upgrade(postgres_url_for(self.template))

    def create_empty(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        run_blocking(lambda: _admin_execute(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return postgres_url_for(name)

    def copy(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        run_blocking(lambda: _admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        self.created.append(name)
        return postgres_url_for(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        run_blocking(lambda: _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            run_blocking(lambda name=name: _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()


def _postgres_unavailable_reason() -> str | None:
    try:
        run_blocking(lambda: _admin_execute("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no PostgreSQL here"
        return f"PostgreSQL at {make_url(postgres_admin_url()).render_as_string()} is unreachable: {exc!r}"
    return None


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """The run's PostgreSQL databases; skips (or fails, when required) without a server."""
    reason = _postgres_unavailable_reason()
    if reason is not None:
        if os.environ.get("REFERRAL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REFERRAL_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    databases = PostgresDatabases()
    databases.create_template()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per run, copied for every test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    migrations.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: ``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, on the test's backend."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create_empty()
    yield url
    databases.drop(url)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at head on the test's backend."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "referral.sqlite3"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.copy()
    yield url
    databases.drop(url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings of a service on the test's fresh database."""
    return Settings(database_url=database_url, var_dir=tmp_path / "var", log_format="json")


@pytest.fixture
def app(settings: Settings) -> web.Application:
    """The application under test."""
    return create_app(settings)


@pytest.fixture
async def client(
    app: web.Application, aiohttp_client: Callable[..., Coroutine[Any, Any, TestClient[Any, Any]]]
) -> TestClient[Any, Any]:
    """An HTTP client of the running application."""
    return await aiohttp_client(app)


@pytest.fixture
async def authority(client: TestClient[Any, Any]) -> TestParty:
    """An authority (DE) with a signing key and an API client."""
    return await make_party(client, kind="authority", country="DE")


@pytest.fixture
async def provider(client: TestClient[Any, Any]) -> TestParty:
    """A provider (IE) with a signing key and an API client."""
    return await make_party(client, kind="provider", country="IE")
