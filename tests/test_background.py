"""The API process runs its background loops: audit entries get sequenced and signed without being asked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from referral.audit.models import AuditCheckpoint, AuditPending
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from tests.auth.factories import make_party


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_background_tasks": True, "audit_batch_interval_ms": 20})


async def test_the_sequencer_runs_in_the_api_process(client: TestClient[Any, Any]) -> None:
    await make_party(client, kind="provider")  # audited: party, key and client creation
    app = client.server.app
    assert app is not None
    for _ in range(250):
        async with app[sessionmaker_key]() as session:
            pending = (await session.execute(select(func.count()).select_from(AuditPending))).scalar_one()
            checkpoints = (
                await session.execute(select(func.count()).select_from(AuditCheckpoint))
            ).scalar_one()
        if pending == 0 and checkpoints:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {pending} pending entries and {checkpoints} checkpoints after 5 s")
