"""Secrets, keys, tokens and referral content never reach the logs.

Every log line of a whole lifecycle (token requests good and bad, submission, feed, statuses, webhook
registration and signed delivery, an invalid document) is captured at debug level and searched for every
secret and every piece of content that passed through.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from referral.config import Settings
from referral.core.appkeys import service_keys_key
from referral.core.logging import configure_logging
from tests.auth.factories import (
    access_token,
    client_assertion,
    make_party,
    sign_document,
    token_endpoint,
    token_form,
)
from tests.referrals.test_api import post_status, referral_claims, status_claims


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"webhook_allow_private": True, "webhook_poll_interval_seconds": 0.05, "log_level": "debug"}
    )


@pytest.fixture
def captured_logs(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    monkeypatch.setattr("sys.stderr", buffer)
    configure_logging(settings)
    yield buffer
    structlog.configure(**saved)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


async def test_nothing_secret_or_confidential_is_logged(
    captured_logs: io.StringIO, client: TestClient[Any, Any]
) -> None:
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    authority_token = await access_token(client, authority)
    provider_token = await access_token(client, provider)
    as_authority = {"Authorization": f"Bearer {authority_token}"}
    as_provider = {"Authorization": f"Bearer {provider_token}"}

    # A refused login: the assertion must not be logged either.
    forged = client_assertion(provider.client_id, authority.client_key, audience=token_endpoint(client))
    refused = await client.post("/oauth/token", data=token_form(forged))
    assert refused.status == 401

    received: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(dict(request.headers))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hooks", hook)
    async with TestServer(receiver) as server:
        response = await client.post(
            "/v1/webhooks", json={"url": str(server.make_url("/hooks"))}, headers=as_provider
        )
        webhook = await response.json()

        claims = referral_claims(authority, provider, statement_of_reasons="CONFIDENTIAL-REASONS-7f3a")
        claims["items"] = [{"url": "https://video.example.com/watch?v=CONFIDENTIAL-ITEM-91c2"}]
        compact = sign_document(authority, claims)
        response = await client.post(
            "/v1/referrals", data=compact, headers={**as_authority, "Content-Type": "application/jose"}
        )
        assert response.status == 201
        referral_id = (await response.json())["referral"]["id"]
        delivery_headers = await asyncio.wait_for(received.get(), 20)

    await client.get("/v1/feed", headers=as_provider)
    status, _body = await post_status(
        client, provider, referral_id, status_claims(provider, referral_id, "acknowledged")
    )
    assert status == 201
    invalid = sign_document(authority, {**claims, "items": [{"url": "not-a-url CONFIDENTIAL-BAD-55"}]})
    response = await client.post(
        "/v1/referrals", data=invalid, headers={**as_authority, "Content-Type": "application/jose"}
    )
    assert response.status == 422

    app = client.server.app
    assert app is not None
    secrets = {
        "authority access token": authority_token,
        "provider access token": provider_token,
        "forged client assertion": forged,
        "webhook secret": webhook["secret"],
        "webhook secret bytes": webhook["secret"].removeprefix("whsec_"),
        "webhook signature": delivery_headers["webhook-signature"].split(" ")[0].split(",", 1)[1],
        "signed referral": compact,
        "signed referral payload": compact.split(".")[1],
        "invalid referral payload": invalid.split(".")[1],
        "statement of reasons": "CONFIDENTIAL-REASONS-7f3a",
        "item url": "CONFIDENTIAL-ITEM-91c2",
        "refused item url": "CONFIDENTIAL-BAD-55",
        "authority private key": json.loads(authority.signing_key.export_private())["d"],
        "client private key": json.loads(authority.client_key.export_private())["d"],
        "service private key": app[service_keys_key].active.private_jwk()["d"],
    }
    logs = captured_logs.getvalue()
    assert '"event": "request"' in logs or '"event":"request"' in logs, "the logs were not captured"
    leaked = [name for name, value in secrets.items() if value in logs]
    where = {
        name: logs[max(0, logs.index(secrets[name]) - 300) : logs.index(secrets[name]) + 50]
        for name in leaked
    }
    assert leaked == [], where
