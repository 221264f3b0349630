"""When and how long to wait before trying a request again: exponential back-off with jitter."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

Sleep = Callable[[float], Awaitable[None]]

# Jitter spreads the retries of many clients that failed together; it need not be unpredictable.
_random = secrets.SystemRandom()


@dataclass(frozen=True)
class RetryPolicy:
    """How often one request is tried in all, and the back-off between tries (seconds)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The wait before retry number ``retry`` (0-based): ``Retry-After`` if given, else back-off."""
        if retry_after is not None:
            return max(retry_after, 0.0)
        ceiling = min(self.max_delay, self.base_delay * 2.0**retry)
        # "Equal jitter": at least half the back-off, so retries never bunch up at zero.
        return ceiling / 2 + float(_random.uniform(0, ceiling / 2))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), if it says."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - (now or datetime.now(UTC))).total_seconds(), 0.0)
