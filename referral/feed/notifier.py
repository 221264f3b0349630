"""Wake-ups for waiting feed requests and delivery workers, in this process and across processes.

The outbox writes its events just before COMMIT and names the recipients in the session; after the commit
the process's :class:`Notifier` wakes whoever waits for them. On PostgreSQL the same transaction also sends
``NOTIFY referral_events, '<party id>'`` (delivered by the server only if the transaction commits), and every
process LISTENs on one dedicated connection, so a request waiting on one host wakes for a commit on another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from sqlalchemy.engine import make_url

from referral.core.appkeys import settings_key

log = structlog.get_logger("referral.feed.notifier")

CHANNEL = "referral_events"
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)


class Notifier:
    """Sets the asyncio events of those waiting for a party's new events (or for anyone's)."""

    def __init__(self) -> None:
        self._by_party: dict[str, set[asyncio.Event]] = {}
        self._any: set[asyncio.Event] = set()

    @contextlib.contextmanager
    def listen(self, party_id: str | None = None) -> Iterator[asyncio.Event]:
        """An event that is set when ``party_id`` (any party, if None) gets new events.

        Listen *before* reading the outbox, so that a commit between the read and the wait is not missed.
        """
        woken = asyncio.Event()
        waiting = self._any if party_id is None else self._by_party.setdefault(party_id, set())
        waiting.add(woken)
        try:
            yield woken
        finally:
            waiting.discard(woken)
            if party_id is not None and not waiting:
                self._by_party.pop(party_id, None)

    def wake(self, party_ids: Iterable[str]) -> None:
        """New events were committed for these parties."""
        for party_id in party_ids:
            for woken in self._by_party.get(party_id, ()):
                woken.set()
        for woken in self._any:
            woken.set()

    def wake_all(self) -> None:
        """Wake everyone (after a lost LISTEN connection, notifications may have been missed)."""
        self.wake(list(self._by_party))


notifier_key = web.AppKey("notifier_key", Notifier)


def _listen_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _hold(connection: asyncpg.Connection, notifier: Notifier) -> None:
    """LISTEN on one connection until it is lost."""
    lost = asyncio.Event()

    def on_notify(_connection: Any, _pid: int, _channel: str, party_id: str) -> None:
        notifier.wake((party_id,))

    connection.add_termination_listener(lambda _connection: lost.set())
    await connection.add_listener(CHANNEL, on_notify)
    # Anything committed while nobody was listening would otherwise wait for the next event.
    notifier.wake_all()
    await lost.wait()


async def _listen(dsn: str, notifier: Notifier) -> None:
    """Hold one LISTEN connection, reconnecting with back-off for as long as the process runs."""
    failures = 0
    while True:
        try:
            connection = await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            log.warning("feed_listen_connect_failed", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            continue
        failures = 0
        try:
            await _hold(connection, notifier)
            log.warning("feed_listen_connection_lost")
        finally:
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)


async def notifier_listener(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: on PostgreSQL, LISTEN for other processes' commits (every API process and worker)."""
    settings = app[settings_key]
    if settings.is_sqlite:
        yield
        return
    listening = _listen(_listen_dsn(settings.database_url), app[notifier_key])
    task = asyncio.create_task(listening, name="feed-listen")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
