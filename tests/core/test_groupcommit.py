"""Group commit without a database: what is grouped, and what each waiting request gets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from referral.core.groupcommit import GroupCommit


class Recorder:
    """A flush that records its groups and holds the first one until released."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()

    async def flush(self, items: Sequence[int]) -> list[int | BaseException]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            await self.release.wait()
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]


async def test_items_queued_while_a_group_is_written_form_the_next_group() -> None:
    recorder = Recorder()
    groups = GroupCommit(recorder.flush, max_group=3)
    first = asyncio.ensure_future(groups.submit(0))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(groups.submit(item)) for item in (2, 4, 6, 8)]
    await asyncio.sleep(0)
    assert recorder.groups == [[0]]
    recorder.release.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [20, 40, 60, 80]
    assert recorder.groups == [[0], [2, 4, 6], [8]]
    await groups.close()


async def test_an_item_s_exception_is_raised_to_its_own_request_only() -> None:
    recorder = Recorder()
    recorder.release.set()
    groups = GroupCommit(recorder.flush, max_group=10)
    outcomes = await asyncio.gather(*(groups.submit(item) for item in (1, 2, 3)), return_exceptions=True)
    assert [str(outcome) for outcome in outcomes] == ["odd 1", "20", "odd 3"]


async def test_a_failed_flush_fails_every_request_of_the_group_and_the_next_group_runs() -> None:
    calls: list[list[str]] = []

    async def flush(items: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(items))
        if "boom" in items:
            raise ConnectionError("database away")
        return list(items)

    groups = GroupCommit(flush, max_group=2)
    outcomes = await asyncio.gather(
        groups.submit("boom"), groups.submit("a"), groups.submit("b"), return_exceptions=True
    )
    assert isinstance(outcomes[0], ConnectionError)
    assert isinstance(outcomes[1], ConnectionError)
    assert outcomes[2] == "b"
    assert calls == [["boom", "a"], ["b"]]


async def test_a_request_that_goes_away_does_not_stop_its_group() -> None:
    recorder = Recorder()
    groups = GroupCommit(recorder.flush, max_group=10)
    first = asyncio.ensure_future(groups.submit(0))
    await asyncio.sleep(0)
    abandoned = asyncio.ensure_future(groups.submit(2))
    kept = asyncio.ensure_future(groups.submit(4))
    await asyncio.sleep(0)
    abandoned.cancel()
    recorder.release.set()
    assert await first == 0
    assert await kept == 40
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    # The abandoned item was written all the same, as a request whose client hung up would have been.
    assert recorder.groups == [[0], [2, 4]]
    await groups.close()


async def test_with_two_writers_a_second_group_is_written_while_the_first_waits() -> None:
    started: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        started.append(list(items))
        await release.wait()
        return list(items)

    groups = GroupCommit(flush, max_group=10, writers=2)
    first = asyncio.ensure_future(groups.submit(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(groups.submit(2))
    await asyncio.sleep(0)
    third = asyncio.ensure_future(groups.submit(3))
    await asyncio.sleep(0)
    # Two groups in flight at once; the third item waits for a writer to come free.
    assert started == [[1], [2]]
    release.set()
    assert await asyncio.gather(first, second, third) == [1, 2, 3]
    assert started == [[1], [2], [3]]
    await groups.close()
