"""Login throttling: too many failed client authentications per client id or per address answer 429.

Counters live in this process. With N API processes an attacker gets up to N times the budget; that is
accepted because each process still caps the rate, and the audit log records every refusal wherever it
happened. A shared counter (database or Redis) would add a round trip to every token request.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

# Bound on the number of distinct keys remembered, so a flood of random client ids cannot exhaust memory.
MAX_TRACKED_KEYS = 100_000


class LoginThrottle:
    """Sliding-window failure counters keyed by ``client:<id>`` and ``addr:<ip>``."""

    def __init__(self, *, max_failures: int, window_seconds: float) -> None:
        self._max_failures = max_failures
        self._window = window_seconds
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, keys: list[str]) -> int | None:
        """Seconds until another attempt is allowed for every key, or None when none is throttled."""
        now = time.monotonic()
        waits = []
        for key in keys:
            failures = self._recent(key, now)
            if failures is not None and len(failures) >= self._max_failures:
                waits.append(failures[len(failures) - self._max_failures] + self._window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def record_failure(self, keys: list[str]) -> None:
        """Count one failed authentication against each key."""
        now = time.monotonic()
        for key in keys:
            failures = self._failures.setdefault(key, deque())
            failures.append(now)
            self._failures.move_to_end(key)
            while len(failures) > self._max_failures:
                failures.popleft()
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        """Clear a key's failures after a successful authentication."""
        self._failures.pop(key, None)
