"""Ids: UUIDv7, strictly increasing within a process (within a millisecond, and when the clock steps back)."""

from __future__ import annotations

import time
import uuid

import pytest

from referral.core import ids


def _fields(value: str) -> tuple[int, int]:
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value
    return parsed.int >> 80, parsed.int & ((1 << 80) - 1)


def test_ids_are_uuidv7_with_the_current_millisecond_and_strictly_increasing() -> None:
    before = time.time_ns() // 1_000_000
    made = [ids.new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    stamps = [_fields(value)[0] for value in made]
    assert before <= stamps[0] <= stamps[-1] <= after + 1
    # Far more ids than milliseconds: many share one, and still sort in the order they were made.
    assert len(set(stamps)) < len(made)


def test_ids_keep_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ids.new_id()
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_000_000_000_000)  # 1970: far behind
    later = [ids.new_id() for _ in range(3)]
    assert [first, *later] == sorted({first, *later})


def test_a_full_millisecond_borrows_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = time.time_ns()
    monkeypatch.setattr(ids.time, "time_ns", lambda: frozen)
    first = ids.new_id()
    monkeypatch.setattr(ids, "_last_random", (1 << 74) - 1)
    second = ids.new_id()
    assert second > first
    assert _fields(second)[0] == _fields(first)[0] + 1
