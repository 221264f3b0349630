"""Background loops of the API process (audit sequencer, referral clock), started and stopped with the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from referral.core.appkeys import settings_key

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def background_task(name: str, run: Callable[[web.Application], Coroutine[Any, Any, None]]) -> CleanupContext:
    """A cleanup_ctx that runs ``run(app)`` until shutdown, unless background tasks are turned off."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        if not app[settings_key].run_background_tasks:
            yield
            return
        task = asyncio.create_task(run(app), name=name)
        yield
        # Cancel until it is done: a cancellation swallowed by a library must not hang the shutdown.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
