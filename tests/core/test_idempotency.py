"""``Idempotency-Key``: a retry gets the first response; a key reused for another request is refused."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, insert, select

from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.core.idempotency import IdempotencyRecord
from referral.core.timeutil import utcnow
from referral.parties.models import Party
from tests.auth.factories import bearer, make_party


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_background_tasks": False})


async def _parties(client: TestClient[Any, Any]) -> int:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        return int((await session.execute(select(func.count()).select_from(Party))).scalar_one())


async def test_a_retried_post_gets_the_first_response_and_has_one_effect(
    client: TestClient[Any, Any],
) -> None:
    operator = await make_party(client, kind="operator")
    headers = {**await bearer(client, operator), "Idempotency-Key": "create-provider-42"}
    body = {"kind": "provider", "name": "Example Video", "country": "NL"}
    before = await _parties(client)
    first = await client.post("/v1/parties", json=body, headers=headers)
    second = await client.post("/v1/parties", json=body, headers=headers)
    assert first.status == 201, await first.text()
    assert second.status == 201
    assert await first.json() == await second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _parties(client) == before + 1

    other = await client.post("/v1/parties", json={**body, "name": "Another"}, headers=headers)
    assert other.status == 422
    assert (await other.json())["type"].endswith("/idempotency-key-reused")
    assert await _parties(client) == before + 1


async def test_errors_are_replayed_too_and_keys_are_per_client(client: TestClient[Any, Any]) -> None:
    operator = await make_party(client, kind="operator")
    other_operator = await make_party(client, kind="operator")
    bad = {"kind": "provider", "name": "X", "country": "ZZ"}
    headers = {**await bearer(client, operator), "Idempotency-Key": "k1"}
    first = await client.post("/v1/parties", json=bad, headers=headers)
    again = await client.post("/v1/parties", json=bad, headers=headers)
    assert first.status == again.status == 422
    assert again.headers["Idempotent-Replayed"] == "true"
    # The same key from another client is another request.
    good = {"kind": "provider", "name": "Y", "country": "NL"}
    response = await client.post(
        "/v1/parties", json=good, headers={**await bearer(client, other_operator), "Idempotency-Key": "k1"}
    )
    assert response.status == 201


async def test_a_key_whose_first_request_is_running_answers_409(client: TestClient[Any, Any]) -> None:
    operator = await make_party(client, kind="operator")
    app = client.server.app
    assert app is not None
    body = b'{"kind": "provider", "name": "Z", "country": "NL"}'
    fingerprint = hashlib.sha256(b"POST /v1/parties\n" + body).hexdigest()
    async with app[sessionmaker_key].begin() as session:
        await session.execute(
            insert(IdempotencyRecord).values(
                client_id=operator.client_id, key="busy", request_sha256=fingerprint, created_at=utcnow()
            )
        )
    response = await client.post(
        "/v1/parties",
        data=body,
        headers={
            **await bearer(client, operator),
            "Idempotency-Key": "busy",
            "Content-Type": "application/json",
        },
    )
    assert response.status == 409
    assert response.headers["Retry-After"] == "1"


async def test_invalid_keys_are_refused(client: TestClient[Any, Any]) -> None:
    operator = await make_party(client, kind="operator")
    response = await client.post(
        "/v1/parties", json={}, headers={**await bearer(client, operator), "Idempotency-Key": "x" * 256}
    )
    assert response.status == 400
