"""``/v1/feed``: the caller's events in commit order, long-polled."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from referral.auth.principal import Principal, require_scope
from referral.core import errors
from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.timeutil import utcnow
from referral.core.web import json_response, request_id
from referral.feed import service
from referral.feed.notifier import notifier_key

routes = web.RouteTableDef()
waiting_key = web.AppKey("feed_waiting_key", Counter[str])

MAX_WAIT_SECONDS = 30
DEFAULT_LIMIT = 100


async def feed_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the count of long-poll requests each API client holds open in this process."""
    app[waiting_key] = Counter()
    yield


def _bounded_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise errors.BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


@contextlib.contextmanager
def _waiting_slot(request: web.Request, principal: Principal) -> Iterator[None]:
    waiting = request.app[waiting_key]
    cap = request.app[settings_key].feed_max_waiting_per_client
    if waiting[principal.client_id] >= cap:
        raise errors.TooManyRequests(
            f"this client already holds {cap} waiting feed requests; wait for one to return",
            headers={"Retry-After": "1"},
        )
    waiting[principal.client_id] += 1
    try:
        yield
    finally:
        waiting[principal.client_id] -= 1
        if not waiting[principal.client_id]:
            del waiting[principal.client_id]


@routes.get("/v1/feed")
async def read_feed(request: web.Request) -> web.Response:
    """The caller's events after a cursor; with ``wait``, held open until one arrives (up to 30 s)."""
    principal = require_scope(request, "referrals:read")
    after = service.parse_cursor(request.query.get("after"))
    limit = _bounded_int(request, "limit", DEFAULT_LIMIT, 1, service.MAX_PAGE_SIZE)
    wait = _bounded_int(request, "wait", 0, 0, MAX_WAIT_SECONDS)
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait
    with _waiting_slot(request, principal) if wait else contextlib.nullcontext():
        while True:
            # Listen before reading: a commit between the read and the wait still wakes us.
            with request.app[notifier_key].listen(principal.party_id) as woken:
                async with request.app[sessionmaker_key].begin() as session:
                    page = await service.read_feed(
                        session,
                        principal=principal,
                        after=after,
                        limit=limit,
                        at=utcnow(),
                        request_id=request_id(request),
                    )
                remaining = give_up_at - loop.time()
                if page.events or remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await woken.wait()
    return json_response(
        {"events": [service.event_view(event) for event in page.events], "next_cursor": str(page.next_cursor)}
    )
