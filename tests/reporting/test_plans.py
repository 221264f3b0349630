"""PostgreSQL's plan for the statistics' counts does not depend on how long the status history is."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import text

from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.core.ids import new_id
from referral.reporting import queries
from referral.reporting.params import StatsQuery
from referral.reporting.periods import Interval
from tests.bench.test_seed import seed_between_two_parties
from tests.sqlcapture import sent_statements


async def test_the_counts_cost_the_same_however_long_the_history(
    client: TestClient[Any, Any], settings: Settings, backend: str
) -> None:
    """Whether an ended preservation was ever extended is read from the history once (a hashed subplan).
    As a correlated EXISTS, PostgreSQL priced it as a scan of the history per referral: once the history
    held a few thousand rows, that estimate made it choose a parallel, sort-based plan for the counts that
    took two to three times as long on a million referrals. The estimate is compared here."""
    if backend != "postgresql":
        pytest.skip("the plan checked here is PostgreSQL's")
    await seed_between_two_parties(client, settings, 5_000)
    app = client.server.app
    assert app is not None
    sessions = app[sessionmaker_key]
    engine = sessions.kw["bind"]
    now = datetime.now(UTC)
    query = StatsQuery(start=now - timedelta(days=365), end=now, interval=Interval.MONTH)
    with sent_statements(engine, "facts.period") as sent:
        async with sessions() as session:
            await queries.counts(session, query=query, audience=queries.Audience(), now=now)
    ((statement, parameters),) = sent

    async def estimated_cost() -> float:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("ANALYZE referrals, referral_statuses")
            plan = (
                await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
            ).scalar()
        top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
        indexes.update(_index_names(top))
        return float(top["Total Cost"])

    indexes: set[str] = set()
    before = await estimated_cost()
    async with sessions.begin() as session:
        ids = (await session.execute(text("SELECT id FROM referrals LIMIT 3000"))).scalars().all()
        await session.execute(
            text(
                "INSERT INTO referral_statuses (id, referral_id, status, previous_status, recorded_at, "
                "audit_entry_id) VALUES (:id, :referral, 'acknowledged', 'delivered', now(), :entry)"
            ),
            [{"id": new_id(), "referral": referral_id, "entry": new_id()} for referral_id in ids],
        )
    after = await estimated_cost()
    assert after < 2 * before, (before, after)
    # The set is read from the partial index of extended preservations, not from the whole history.
    assert "ix_referral_statuses_extended" in indexes


def _index_names(node: dict[str, Any]) -> set[str]:
    names = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        names |= _index_names(child)
    return names
