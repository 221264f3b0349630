"""Database: typed declarative base, UTC timestamps on both backends, engine and session factory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon

from referral.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both databases.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as naive UTC text and
    made aware again on the way out. Naive datetimes are refused: they are always a bug here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table, with the naming convention that keeps migrations stable."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 - SQLAlchemy reads it as a class attribute


def _set_sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


# On SQLite a request waits for the process's one connection in a queue that always moves (every holder is
# running a short transaction), so the wait only ends in an error when something is stuck.
SQLITE_QUEUE_TIMEOUT_SECONDS = 30.0


class NestedSessionError(RuntimeError):
    """A task asked for a second connection while it holds the only one: it would wait for itself."""


class _HandOverQueue(QueueCommon[ConnectionPoolEntry]):
    """Idle connections and the tasks waiting for one, served strictly in the order they asked.

    SQLAlchemy's asyncio queue lets a task that asks while a returned connection sits in the queue take it
    ahead of the waiter already woken for it, and that waiter then queues again at the back; with one
    connection and requests of several transactions an unlucky request loses its turn again and again. Here a
    returned connection goes straight to the longest waiter, and nobody takes an idle one while anyone waits.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._idle: deque[ConnectionPoolEntry] = deque()
        self._waiters: deque[asyncio.Future[ConnectionPoolEntry]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def put_nowait(self, item: ConnectionPoolEntry) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        if self.full():
            raise Full
        self._idle.append(item)

    def put(self, item: ConnectionPoolEntry, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> ConnectionPoolEntry:
        if self._live_waiters() or not self._idle:
            raise Empty
        return self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        if not block or (self._idle and not self._live_waiters()):
            return self.get_nowait()
        return await_(self._wait(patience=timeout))

    def _live_waiters(self) -> bool:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        return bool(self._waiters)

    async def _wait(self, *, patience: float | None) -> ConnectionPoolEntry:
        waiter: asyncio.Future[ConnectionPoolEntry] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(patience):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed over just as the time ran out
            self._forget(waiter)
            raise Empty from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.put_nowait(waiter.result())  # handed over to a task being cancelled: pass it on
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: asyncio.Future[ConnectionPoolEntry]) -> None:
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: garbage collection or synchronous use
        return None


class OneConnectionPool(AsyncAdaptedQueuePool):
    """SQLite's pool: one connection per process, handed to waiting tasks first come, first served.

    SQLite has one write lock per database. With several connections in one process, concurrent writers wait
    for it in SQLite's busy handler, which sleeps up to 100 ms at a time without regard to who came first:
    some requests took over a second and some failed with "database is locked". With one connection the
    waiting happens here, in asyncio, fairly and without sleeping; a transaction never waits for another of
    this process. (StaticPool and SingletonThreadPool would share one connection between concurrent
    transactions; NullPool would bring the lock fight back.) The busy handler still covers other processes:
    ``referral worker``, the CLI, migrations.

    The price is that a task must never ask for a second connection while it holds one. It would wait for
    itself, so that is refused at once with :class:`NestedSessionError` instead of hanging until the timeout.
    """

    _queue_class = _HandOverQueue

    def __init__(self, creator: Any, **kw: Any) -> None:
        super().__init__(creator, **{**kw, "pool_size": 1, "max_overflow": 0})
        self._holder: asyncio.Task[Any] | None = None

    def _do_get(self) -> ConnectionPoolEntry:
        task = _current_task()
        if task is not None and task is self._holder:
            raise NestedSessionError(
                "this task already holds the process's only SQLite connection; a session opened inside "
                "another would wait for itself: finish the first transaction, or pass its session on"
            )
        record = super()._do_get()
        self._holder = task
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self._holder = None
        super()._do_return_conn(record)


def create_engine(settings: Settings, *, database_url: str | None = None) -> AsyncEngine:
    """An async engine for the configured database with the connection settings this service relies on."""
    url = database_url or settings.database_url
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            poolclass=OneConnectionPool,
            pool_timeout=SQLITE_QUEUE_TIMEOUT_SECONDS,
            pool_pre_ping=False,
            connect_args={"timeout": 5},
        )
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        return engine
    timeout_ms = int(settings.db_statement_timeout * 1000)
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        # Not SQLAlchemy's pre-ping: with asyncpg it is three round trips (BEGIN, a query, ROLLBACK) before
        # every transaction. ``_ping_if_idle`` checks only connections that sat unused for a while.
        pool_pre_ping=False,
        connect_args={
            "timeout": settings.db_pool_timeout,
            "command_timeout": settings.db_statement_timeout,
            "server_settings": {"statement_timeout": str(timeout_ms), "TimeZone": "UTC", "jit": "off"},
        },
    )
    event.listen(engine.sync_engine.pool, "checkin", _note_checkin)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


PING_AFTER_IDLE_SECONDS = 5.0
"""A pooled PostgreSQL connection unused for longer than this is pinged before it is handed out."""

_CHECKED_IN_AT = "referral.checked_in_at"


def _note_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_CHECKED_IN_AT] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    """Pessimistic disconnect handling, only where a disconnect is plausible: a connection that was idle
    (the server restarted, a firewall dropped it) is pinged; one dead answers ``DisconnectionError``, on
    which the pool discards it and hands out another (SQLAlchemy retries the checkout). A connection in
    steady use is not pinged: if it died in between, the request fails like any other database error
    (503) and SQLAlchemy invalidates the pool's older connections."""
    checked_in_at = record.info.get(_CHECKED_IN_AT)
    if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:  # whatever the driver raised, this connection is not usable
        raise sa_exc.DisconnectionError("the idle connection is gone") from exc


def create_sessionmaker(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit; ``info`` is copied into each session's."""
    return async_sessionmaker(engine, expire_on_commit=False, info=info)
