"""Following the caller's event feed (``GET /v1/feed``) with a stored cursor, at least once per event.

The contract: ``GET /v1/feed?after=<cursor>&limit=<n>&wait=<0..30>`` answers
``{"events": [{"cursor", "id", "type", "created_at", "data"}], "next_cursor"}`` in commit order, long-polling
up to ``wait`` seconds when nothing is new.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from referral.client.errors import RateLimitedError, ReferralClientError, ServerError, TransportError
from referral.client.retry import RetryPolicy, Sleep

MAX_WAIT_SECONDS = 30


@dataclass(frozen=True)
class FeedEvent:
    """One event of the feed; ``cursor`` resumes the feed right after it."""

    cursor: str
    id: str
    type: str
    created_at: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> FeedEvent:
        """An event from its JSON object."""
        try:
            return cls(
                cursor=str(document["cursor"]),
                id=str(document["id"]),
                type=str(document["type"]),
                created_at=str(document["created_at"]),
                data=dict(document.get("data") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferralClientError(f"the feed answered a malformed event: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (as the service sent it)."""
        return {
            "cursor": self.cursor,
            "id": self.id,
            "type": self.type,
            "created_at": self.created_at,
            "data": self.data,
        }


@dataclass(frozen=True)
class FeedPage:
    """Events after a cursor, and the cursor to ask with next."""

    events: list[FeedEvent]
    next_cursor: str | None

    @classmethod
    def from_json(cls, document: Any) -> FeedPage:
        """A page from the feed's JSON answer."""
        if not isinstance(document, dict) or not isinstance(document.get("events"), list):
            raise ReferralClientError('the feed answered something other than {"events": [...]}')
        next_cursor = document.get("next_cursor")
        return cls(
            events=[FeedEvent.from_json(event) for event in document["events"]],
            next_cursor=str(next_cursor) if next_cursor else None,
        )


class CursorStore(Protocol):
    """Where a follower keeps the cursor of the last event it handed out and saw handled."""

    def load(self) -> str | None:
        """The stored cursor, or ``None`` to start from the beginning."""

    def save(self, cursor: str) -> None:
        """Store ``cursor``."""


class MemoryCursorStore:
    """A cursor kept in memory (lost when the process ends)."""

    def __init__(self, cursor: str | None = None) -> None:
        self.cursor = cursor

    def load(self) -> str | None:
        """The cursor held."""
        return self.cursor

    def save(self, cursor: str) -> None:
        """Hold ``cursor``."""
        self.cursor = cursor


class FileCursorStore:
    """A cursor kept in a small file, replaced atomically so a crash leaves the old or the new one."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self) -> str | None:
        """The cursor in the file, or ``None`` when there is none yet."""
        with contextlib.suppress(FileNotFoundError):
            return self.path.read_text(encoding="utf-8").strip() or None
        return None

    def save(self, cursor: str) -> None:
        """Write ``cursor`` to a temporary file and move it over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(cursor + "\n", encoding="utf-8")
        os.replace(temporary, self.path)


FetchPage = Callable[[str | None], Awaitable[FeedPage]]
OnRetry = Callable[[int, float, Exception], None]


async def follow(
    fetch_page: FetchPage,
    store: CursorStore,
    *,
    retry: RetryPolicy,
    sleep: Sleep,
    on_retry: OnRetry | None = None,
    poll_interval: float = 1.0,
    long_polling: bool = True,
) -> AsyncGenerator[FeedEvent, None]:
    """Yield events from the stored cursor on, for ever, reconnecting with back-off on transient failures.

    An event's cursor is saved when the consumer asks for the next one, i.e. after it handled the event;
    a consumer that stops or crashes mid-event gets that event again on resume (at least once).
    """
    cursor = store.load()
    failures = 0
    while True:
        try:
            page = await fetch_page(cursor)
        except (TransportError, ServerError, RateLimitedError) as exc:
            retry_after = exc.retry_after if isinstance(exc, RateLimitedError | ServerError) else None
            delay = retry.delay(failures, retry_after)
            failures += 1
            if on_retry is not None:
                on_retry(failures, delay, exc)
            await sleep(delay)
            continue
        failures = 0
        for event in page.events:
            yield event
            cursor = event.cursor
            store.save(cursor)
        if page.next_cursor and page.next_cursor != cursor:
            cursor = page.next_cursor
            store.save(cursor)
        if not page.events and not long_polling:
            await sleep(poll_interval)
