"""Group commit: the writes of concurrent requests go to the database together, one transaction per group.

A transaction costs the same few round trips and the same per-statement machinery whether it writes one
referral or fifty, and on PostgreSQL every COMMIT waits for a WAL flush. So while one group is being
written, the requests that arrive queue up, and the next group is everything queued by then (up to
``max_group``): under light load a group is one request and nothing waits longer than it would have alone;
under heavy load the cost of a transaction is shared by many. No timer, no added latency.

Every request is still answered only after the transaction that holds its rows has committed, and each
request's rows (business rows, audit entry, outbox events) are in that one transaction together. What the
group shares is the fate: if the transaction fails, the flush function decides what each request gets
(``flush`` returns one outcome per item: a result, or an exception that request raises).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

Flush = Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]]


class GroupCommit(Generic[Item, Result]):
    """Queues items and writes them in groups with ``flush``, up to ``writers`` groups at a time.

    Several writers keep the database busy while a group waits for its round trips and its COMMIT: a
    group's latency, not the machine, would otherwise bound the throughput. (They still commit in an order
    the database decides, as independent requests would; whatever must follow commit order, such as feed
    cursors, is ordered by the database's row locks.)
    """

    def __init__(self, flush: Flush[Item, Result], *, max_group: int, writers: int = 1) -> None:
        self._flush = flush
        self._max_group = max_group
        self._writers_wanted = writers
        self._queue: collections.deque[tuple[Item, asyncio.Future[Result]]] = collections.deque()
        self._writers: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """Write ``item`` with the next group; returns its outcome once that group has committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._writers) < self._writers_wanted:
            # A task of its own: a request that goes away while waiting must not cancel its group's write.
            writer = asyncio.create_task(self._write_groups(), name="group-commit")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await future

    async def _write_groups(self) -> None:
        while self._queue:
            group = [self._queue.popleft() for _ in range(min(self._max_group, len(self._queue)))]
            try:
                outcomes = await self._flush([item for item, _future in group])
            except asyncio.CancelledError:
                for _item, future in group:
                    future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure as its own
                outcomes = [exc] * len(group)
            for (_item, future), outcome in zip(group, outcomes, strict=True):
                if future.done():  # the request was cancelled while it waited
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def close(self) -> None:
        """Wait for the groups being written (at shutdown, after the last request was answered)."""
        if self._writers:
            await asyncio.wait(set(self._writers))
