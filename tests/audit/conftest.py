"""Audit test helpers: append entries in real transactions and sequence them deterministically."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from referral.app import create_app
from referral.audit.sequencer import note_signer, sequence_pending
from referral.audit.service import append_entry
from referral.auth.principal import SCOPES_BY_KIND, PartyKind, Principal, principal_key
from referral.config import Settings
from referral.core.appkeys import service_keys_key, sessionmaker_key
from referral.core.web import Handler


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background sequencer: the tests sequence when they choose to."""
    return settings.model_copy(update={"run_background_tasks": False, "audit_batch_size": 7})


@web.middleware
async def _principal_from_test_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Stands in for the bearer-token middleware so these tests exercise the audit routes alone.
    header = request.headers.get("X-Test-Principal")
    if header:
        kind, party_id = header.split(":", 1)
        party_kind = PartyKind(kind)
        request[principal_key] = Principal(
            party_id=party_id,
            party_kind=party_kind,
            client_id=f"client-{party_id}",
            scopes=SCOPES_BY_KIND[party_kind],
            token_id="test",
        )
    return await handler(request)


@pytest.fixture
def app(settings: Settings) -> web.Application:
    application = create_app(settings)
    application.middlewares.append(_principal_from_test_header)
    return application


def as_party(kind: str, party_id: str) -> dict[str, str]:
    """Request headers that make the test middleware authenticate the request as this party."""
    return {"X-Test-Principal": f"{kind}:{party_id}"}


Appender = Callable[..., Awaitable[list[str]]]


@pytest.fixture
def append(app: web.Application) -> Appender:
    """Append ``count`` entries, each in its own committed transaction; returns their ids."""

    async def appender(count: int = 1, **fields: Any) -> list[str]:
        sessionmaker: async_sessionmaker[AsyncSession] = app[sessionmaker_key]
        ids = []
        for number in range(count):
            async with sessionmaker.begin() as session:
                entry = await append_entry(
                    session,
                    action=fields.get("action", "referral.submitted"),
                    subject_type=fields.get("subject_type", "referral"),
                    subject_id=fields.get("subject_id", f"subject-{number}"),
                    actor_party=fields.get("actor_party", "party-a"),
                    actor_client=fields.get("actor_client", "client-a"),
                    request_id=fields.get("request_id", f"req-{number}"),
                    digest=fields.get("digest", "ab" * 32),
                    visible_to=fields.get("visible_to", ["party-a", "party-b"]),
                )
            ids.append(entry.id)
        return ids

    return appender


@pytest.fixture
def sequence(app: web.Application, settings: Settings) -> Callable[[], Awaitable[int]]:
    """Run the sequencer until nothing is pending."""

    async def run() -> int:
        return await sequence_pending(
            app[sessionmaker_key],
            signer=note_signer(app[service_keys_key].active, settings.audit_origin),
            origin=settings.audit_origin,
            batch_size=settings.audit_batch_size,
        )

    return run
