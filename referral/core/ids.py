"""Identifiers: UUIDv7 (RFC 9562), so ids sort by creation time and index well on both databases.

Within a process they are also strictly increasing (RFC 9562 §6.2, method 2, "monotonic random"): an id made
in the same millisecond as the previous one (or after the clock stepped back) is the previous one's random
part plus one. So rows made one after the other sort in that order, as the audit log does with its entries
(sequenced by id): a delivery entry and the read entry made in the same instant stay in that order.
"""

from __future__ import annotations

import os
import threading
import time

_RANDOM_BITS = 74  # rand_a (12) and rand_b (62)
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _next() -> tuple[int, int]:
    global _last_ms, _last_random
    unix_ms = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big") >> (80 - _RANDOM_BITS)
    with _lock:
        if unix_ms <= _last_ms:
            unix_ms, random = _last_ms, _last_random + 1
            if random >> _RANDOM_BITS:  # 2**74 ids in one millisecond: borrow the next one
                unix_ms, random = unix_ms + 1, 0
        _last_ms, _last_random = unix_ms, random
    return unix_ms, random


def new_id() -> str:
    """A fresh UUIDv7 as its canonical lower-case text, after every id this process made before."""
    unix_ms, random = _next()
    rand_a, rand_b = random >> 62, random & 0x3FFF_FFFF_FFFF_FFFF
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    # str(uuid.UUID(int=value)), without building the UUID object (a third of the cost of an id).
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
