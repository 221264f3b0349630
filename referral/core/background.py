"""Background loops (audit sequencer, referral clock, webhook delivery), started and stopped with the app.

A loop gets a ``stopping`` event and checks it between units of work: shutdown sets it and waits for the loop
to finish what it is doing (a database transaction, a webhook attempt) instead of cancelling it in the middle,
which would leave a database driver's thread completing work for an event loop that is gone. Only a loop
that does not stop within the grace period is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from referral.core.appkeys import settings_key

CleanupContext = Callable[[web.Application], AsyncIterator[None]]
Loop = Callable[[web.Application, asyncio.Event], Coroutine[Any, Any, None]]
GRACE_SECONDS = 15.0


async def pause(stopping: asyncio.Event, seconds: float, *also: asyncio.Event) -> None:
    """Wait ``seconds``, or less if the loop is stopping or one of ``also`` is set."""
    events = [stopping, *also]
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def background_task(name: str, run: Loop) -> CleanupContext:
    """A cleanup_ctx running ``run(app, stopping)`` until shutdown, unless background tasks are turned off."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        if not app[settings_key].run_background_tasks:
            yield
            return
        stopping = asyncio.Event()
        task = asyncio.create_task(run(app, stopping), name=name)
        yield
        stopping.set()
        await asyncio.wait({task}, timeout=GRACE_SECONDS)
        # Cancel until it is done: a cancellation swallowed by a library must not hang the shutdown.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
