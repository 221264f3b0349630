"""A real webhook receiver (an aiohttp server) that records every request and answers as scripted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from referral.config import Settings


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers with the scripted (status, headers) in turn, then ``default``; records what it got."""

    server: TestServer | None = None
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: int = 204
    received: list[Received] = field(default_factory=list)
    hold: asyncio.Event | None = None
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hooks"))

    async def handle(self, request: web.Request) -> web.Response:
        received = Received(dict(request.headers), await request.read())
        async with self.arrived:
            self.received.append(received)
            self.arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        status, headers = self.script.pop(0) if self.script else (self.default, {})
        return web.Response(status=status, headers=headers)

    async def wait_for(self, count: int, patience: float = 20) -> list[Received]:
        async with asyncio.timeout(patience), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return self.received


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_retry_delays": (0.05, 0.05, 0.05),
            "webhook_poll_interval_seconds": 0.05,
            "webhook_timeout_seconds": 5.0,
            "clock_interval_seconds": 3600.0,
        }
    )


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Coroutine[Any, Any, TestServer]]) -> Receiver:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    receiver.server = await aiohttp_server(app)
    return receiver
