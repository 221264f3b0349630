"""Time: every timestamp in this service is an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """RFC 3339 text of an aware datetime in UTC with a ``Z`` suffix and microsecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def isoformat_or_none(moment: datetime | None) -> str | None:
    """``isoformat(moment)``, or ``None`` for a clock that has not started."""
    return None if moment is None else isoformat(moment)
