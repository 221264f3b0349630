"""Per-client rate limits: a token bucket per API client (or, for anonymous requests, per address) and route
family (``/v1/referrals``, ``/v1/feed``, ``/v1/webhooks``, ``/oauth``, ...), answering 429 with Retry-After.

Buckets live in this process, like the login throttle: with N API processes a client gets up to N times the
rate. That bounds what one misbehaving client can take from the others without a shared counter (and its round
trip) on every request; the limits are settings.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from aiohttp import web

from referral.auth.principal import principal_key
from referral.core import errors
from referral.core.appkeys import settings_key
from referral.core.web import Handler

MAX_TRACKED_BUCKETS = 100_000
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})


class RateLimiter:
    """Token buckets keyed by (caller, route family), the least recently used forgotten beyond a bound."""

    def __init__(self, *, per_second: float, burst: int) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def retry_after(self, caller: str, family: str, now: float | None = None) -> int | None:
        """Take one token; None if there was one, else the seconds until there is."""
        now = time.monotonic() if now is None else now
        key = (caller, family)
        tokens, updated = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > MAX_TRACKED_BUCKETS:
                self._buckets.popitem(last=False)
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self._rate))


rate_limiter_key = web.AppKey("rate_limiter_key", RateLimiter)


def route_family(path: str) -> str:
    """``/v1/referrals/{id}/statuses`` → ``/v1/referrals``; ``/v1/referrals:batch`` → ``/v1/referrals``."""
    segments = [segment.split(":", 1)[0] for segment in path.split("/") if segment]
    if segments and segments[0] == "v1":
        return "/" + "/".join(segments[:2])
    return "/" + (segments[0] if segments else "")


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 with Retry-After once a caller exceeds its rate on a route family."""
    limiter = request.app.get(rate_limiter_key)
    if limiter is None or request.path in UNLIMITED_PATHS:
        return await handler(request)
    principal = request.get(principal_key)
    caller = f"client:{principal.client_id}" if principal else f"addr:{request.remote}"
    wait = limiter.retry_after(caller, route_family(request.path))
    if wait is not None:
        raise errors.TooManyRequests(
            "too many requests from this client; slow down and retry after the indicated time",
            headers={"Retry-After": str(wait)},
        )
    return await handler(request)


def rate_limiter(app: web.Application) -> None:
    """Install the limiter the settings ask for (none when the rate is 0)."""
    settings = app[settings_key]
    if settings.rate_limit_per_second > 0:
        app[rate_limiter_key] = RateLimiter(
            per_second=settings.rate_limit_per_second, burst=settings.rate_limit_burst
        )
