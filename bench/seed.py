"""Bulk-load referrals for the statistics scenario: COPY on PostgreSQL, executemany on SQLite; not the API.

``python -m bench.seed --database-url URL --referrals 1000000`` adds that many referrals between the parties
already in the database (at least one authority and one provider), with a year of received times and a
realistic spread of types, categories and outcomes (acknowledged, decided and closed times included), so that
``GET /v1/stats`` has something like a year of a busy region to aggregate. The rows are as the referral clock
would have left them over that year: removal orders undecided at their deadline were flagged overdue then,
preservations that lapsed were expired then, and those lapsing within the warning window were warned of; a
service started on the database finds no backlog of sweeps (a year's worth, tens of thousands of audit
entries and events, would otherwise run beside whatever is measured). The rows carry a short stand-in
JWS and receipt instead of real signed documents (a million real ones would be 3 GB): statistics read only the
parsed columns. Status history and items are not seeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import io
import json
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from referral.config import Settings
from referral.referrals.clock import PRESERVING
from referral.referrals.lifecycle import OPEN_STATUSES

COLUMNS = (
    "id",
    "type",
    "issuer_id",
    "addressee_id",
    "jti",
    "kid",
    "jws",
    "jws_sha256",
    "document",
    "category",
    "item_count",
    "status",
    "received_at",
    "deadline",
    "delivered_at",
    "acknowledged_at",
    "decided_at",
    "closed_at",
    "preserved_until",
    "overdue_notified_at",
    "expiry_warned_until",
    "updated_at",
    "audit_entry_id",
    "receipt",
)
CHUNK = 50_000
OPEN = frozenset(status.value for status in OPEN_STATUSES)
WARNING = timedelta(days=Settings.model_fields["preservation_warning_days"].default)
TYPES = (("referral", 0.6), ("removal_order", 0.3), ("preservation_request", 0.1))
CATEGORIES = (
    ("terrorist_content", 0.55),
    ("violent_extremism", 0.2),
    ("incitement_to_violence", 0.1),
    ("illegal_hate_speech", 0.1),
    ("terrorist_financing", 0.03),
    ("other", 0.02),
)
OUTCOMES = {
    "referral": (
        ("action_taken", 0.55),
        ("no_action", 0.2),
        ("partially_actioned", 0.05),
        ("in_review", 0.05),
        ("acknowledged", 0.05),
        ("delivered", 0.04),
        ("submitted", 0.03),
        ("withdrawn", 0.03),
    ),
    "removal_order": (
        ("action_taken", 0.85),
        ("partially_actioned", 0.05),
        ("no_action", 0.04),
        ("acknowledged", 0.03),
        ("submitted", 0.03),
    ),
    "preservation_request": (
        ("preserved", 0.5),
        ("preservation_extended", 0.1),
        ("preservation_released", 0.2),
        ("expired", 0.15),
        ("acknowledged", 0.05),
    ),
}
DECIDED = {"action_taken", "partially_actioned", "no_action"}
CLOSED = {"action_taken", "partially_actioned", "no_action", "withdrawn", "preservation_released", "expired"}
NOT_ACKNOWLEDGED = {"submitted", "delivered", "withdrawn"}
# The statuses of removal orders the clock flagged overdue at their deadline (open then, or decided late).
FLAGGED_WHEN_LATE = OPEN | DECIDED


def _uuid7(moment: datetime, rng: random.Random) -> str:
    """A UUIDv7 of ``moment`` (as ``referral.core.ids.new_id`` makes them, but for a given time)."""
    unix_ms = int(moment.timestamp() * 1000)
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62
    return str(uuid.UUID(int=value | rng.getrandbits(62)))


def _pick(rng: random.Random, choices: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([value for value, _ in choices], weights=[weight for _, weight in choices])[0]


def referral_rows(
    count: int,
    *,
    authorities: list[str],
    providers: list[str],
    now: datetime,
    seed: int = 7,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Rows ``start`` to ``stop`` (default: all) of ``count`` referrals in ``COLUMNS`` order, received over
    the year before ``now``; the same arguments always give the same rows."""
    rng = random.Random(seed * 1_000_003 + start)
    year = 365 * 24 * 3600
    for number in range(start, count if stop is None else stop):
        referral_type = _pick(rng, TYPES)
        status = _pick(rng, OUTCOMES[referral_type])
        # In time order, as a year of history would be stored: ids and indexes grow at their end.
        received = now - timedelta(seconds=year * (1 - (number + rng.random()) / count))
        deadline = received + timedelta(hours=1) if referral_type == "removal_order" else None
        delivered = None if status == "submitted" else received + timedelta(seconds=rng.expovariate(1 / 120))
        acknowledged = (
            None
            if status in NOT_ACKNOWLEDGED or delivered is None
            else delivered + timedelta(seconds=rng.expovariate(1 / 600))
        )
        decided = (
            acknowledged + timedelta(seconds=rng.expovariate(1 / 3000))
            if status in DECIDED and acknowledged
            else None
        )
        closed = decided if status in CLOSED and decided else None
        if status in CLOSED and closed is None:
            closed = received + timedelta(days=rng.randint(1, 90))
        preserved_until = received + timedelta(days=90) if referral_type == "preservation_request" else None
        # What the referral clock did in the meantime (at the moment it came due, give or take a sweep).
        overdue_notified = (
            deadline
            if deadline is not None
            and deadline < now
            and status in FLAGGED_WHEN_LATE
            and (decided is None or decided > deadline)
            else None
        )
        expiry_warned = None
        if preserved_until is not None and status in PRESERVING:
            if preserved_until <= now:
                status, closed = "expired", preserved_until
            if preserved_until <= now + WARNING:
                expiry_warned = preserved_until
        category = _pick(rng, CATEGORIES)
        referral_id = _uuid7(received, rng)
        jti = f"seed-{seed}-{number}"
        document = {"type": referral_type, "category": category, "jti": jti, "seeded": True}
        jws = f"seeded.{jti}.unsigned"
        yield (
            referral_id,
            referral_type,
            authorities[number % len(authorities)],
            providers[(number // len(authorities)) % len(providers)],
            jti,
            "seed",
            jws,
            hashlib.sha256(jws.encode()).hexdigest(),
            document,
            category,
            rng.randint(1, 5),
            status,
            received,
            deadline,
            delivered,
            acknowledged,
            decided,
            closed,
            preserved_until,
            overdue_notified,
            expiry_warned,
            closed or decided or acknowledged or delivered or received,
            referral_id,
            "seeded-receipt",
        )


def _copy_text(value: Any) -> str:
    """A value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        value = json.dumps(value, separators=(",", ":"))
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _copy_chunk(
    *, count: int, start: int, stop: int, authorities: list[str], providers: list[str], now: datetime
) -> bytes:
    """Rows ``start`` to ``stop`` in PostgreSQL's COPY text format (run in a worker process)."""
    rows = referral_rows(count, authorities=authorities, providers=providers, now=now, start=start, stop=stop)
    return "".join("\t".join(_copy_text(value) for value in row) + "\n" for row in rows).encode()


async def _seed_postgres(url: str, count: int, authorities: list[str], providers: list[str]) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    loop = asyncio.get_running_loop()
    now = datetime.now(UTC)
    try:
        # The parties were just read from this database: skip the per-row foreign-key checks of the load
        # (superuser only; without the privilege the load is slower, not different).
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await connection.execute("SET session_replication_role = replica")
        # Worker processes make the COPY text of the next chunks while PostgreSQL takes in the current one.
        with ProcessPoolExecutor(max_workers=2) as pool:
            chunks = [
                loop.run_in_executor(
                    pool,
                    functools.partial(
                        _copy_chunk,
                        count=count,
                        start=start,
                        stop=min(start + CHUNK, count),
                        authorities=authorities,
                        providers=providers,
                        now=now,
                    ),
                )
                for start in range(0, count, CHUNK)
            ]
            for chunk in chunks:
                data = await chunk
                async with connection.transaction():
                    await connection.copy_to_table(
                        "referrals", source=io.BytesIO(data), columns=list(COLUMNS), format="text"
                    )
        # What autovacuum will have done to a year of history: statistics, and the visibility map that lets
        # the statistics read the covering indexes without visiting the table.
        await connection.execute("VACUUM (ANALYZE) referrals")
    finally:
        await connection.close()


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):  # what SQLAlchemy stores for a naive UTC DateTime on SQLite
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _seed_sqlite(url: str, count: int, authorities: list[str], providers: list[str]) -> None:
    connection = sqlite3.connect(url.split(":///", 1)[1])
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        statement = f"INSERT INTO referrals ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        rows = referral_rows(count, authorities=authorities, providers=providers, now=datetime.now(UTC))
        while chunk := [
            tuple(_sqlite_value(value) for value in row) for _, row in zip(range(CHUNK), rows, strict=False)
        ]:
            with connection:
                connection.executemany(statement, chunk)
        connection.execute("ANALYZE")
    finally:
        connection.close()


async def _parties(url: str) -> tuple[list[str], list[str]]:
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split(":///", 1)[1])
        try:
            rows = connection.execute("SELECT id, kind FROM parties ORDER BY id").fetchall()
        finally:
            connection.close()
    else:
        pg = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = [tuple(row) for row in await pg.fetch("SELECT id, kind FROM parties ORDER BY id")]
        finally:
            await pg.close()
    authorities = [party_id for party_id, kind in rows if kind == "authority"]
    providers = [party_id for party_id, kind in rows if kind == "provider"]
    if not authorities or not providers:
        raise SystemExit("seed: the database needs at least one authority and one provider")
    return authorities, providers


async def seed(url: str, count: int) -> float:
    """Add ``count`` referrals to the database at ``url``; returns the seconds it took."""
    started = time.perf_counter()
    authorities, providers = await _parties(url)
    if url.startswith("sqlite"):
        await asyncio.to_thread(_seed_sqlite, url, count, authorities, providers)
    else:
        await _seed_postgres(url, count, authorities, providers)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.seed --database-url URL --referrals N``."""
    parser = argparse.ArgumentParser(prog="python -m bench.seed")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--referrals", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    seconds = asyncio.run(seed(args.database_url, args.referrals))
    print(f"seeded {args.referrals} referrals in {seconds:.1f} s ({args.referrals / seconds:,.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
