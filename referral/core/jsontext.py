"""JSON from outside the service: parse errors of every kind are ``ValueError``, and NUL characters (which
PostgreSQL cannot store in text) are found before anything is written."""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes) -> Any:
    """``json.loads`` whose nesting-depth failure is a ValueError like any other malformed input."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("the JSON is nested too deeply") from exc


def has_nul(value: Any) -> bool:
    """Whether a NUL character occurs in any key or string of a parsed JSON value."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
