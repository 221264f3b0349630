"""Reporting test fixtures: the scenario's parties, and its cases seeded in the months a module picks."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from referral.config import Settings
from tests.reporting.scenario import Parties, cases_for, make_parties
from tests.reporting.seed import Case, seed

NOW = datetime.now(UTC)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background clock: the seed decides when preservations expire."""
    return settings.model_copy(update={"run_background_tasks": False})


@pytest.fixture
async def parties(client: TestClient[Any, Any]) -> Parties:
    return await make_parties(client)


@pytest.fixture
def months() -> list[date]:
    """March to May of last year; a module overrides it to seed other months."""
    year = NOW.year - 1
    return [date(year, 3, 1), date(year, 4, 1), date(year, 5, 1)]


@pytest.fixture
async def cases(client: TestClient[Any, Any], parties: Parties, months: list[date]) -> list[Case]:
    """The scenario's requests, seeded with their histories."""
    cases = cases_for(parties, months)
    await seed(client, cases, now=NOW)
    return cases
