"""The SQL a block of a test sends to the database, to check its statements or their plans."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextlib.contextmanager
def sent_statements(engine: AsyncEngine, containing: str = "") -> Iterator[list[tuple[str, Any]]]:
    """The statements (``containing`` some text) sent through ``engine`` while the block runs, with their
    parameters as the driver got them; an executemany counts once."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if containing in statement:
            sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
