"""Contract tests: schemathesis generates requests from ``docs/api/openapi.yaml`` and sends them to a live
service (a separate ``referral serve`` process) with a valid token of each party kind, and finds no server
error, no response that breaks its documented status codes, media types or schema, and no operation that
ignores authentication."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from referral.config import Settings
from referral.core import migrations
from referral.core.db import create_engine, create_sessionmaker
from referral.parties import service
from referral.parties.service import Actor
from tests.auth.factories import client_assertion, new_key, public_jwk, token_form
from tests.conftest import run_blocking
from tests.test_openapi import OPENAPI_PATH

pytestmark = pytest.mark.slow

KINDS = ("authority", "provider", "observer", "operator")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]

schema = schemathesis.openapi.from_path(OPENAPI_PATH)


@schemathesis.serializer("application/jose")
def _compact_jws(_context: Any, value: Any) -> bytes:
    """A compact JWS travels as its text."""
    return str(value).encode("utf-8", "surrogatepass") if not isinstance(value, bytes) else value


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _seed(settings: Settings) -> dict[str, tuple[str, Any]]:
    """One party of each kind with an API client; returns kind → (client id, private client key)."""
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    clients: dict[str, tuple[str, Any]] = {}
    try:
        async with sessionmaker.begin() as session:
            for kind in KINDS:
                party = await service.create_party(
                    session,
                    kind=kind,
                    name=f"contract {kind}",
                    country="DE",
                    contact="c@example.org",
                    actor=Actor(),
                )
                signing, client_key = new_key(), new_key()
                await service.add_key(
                    session,
                    party_id=party.id,
                    jwk=public_jwk(signing),
                    not_before=None,
                    not_after=None,
                    actor=Actor(),
                )
                api_client = await service.add_client(
                    session, party_id=party.id, jwk=public_jwk(client_key), name="contract", actor=Actor()
                )
                clients[kind] = (api_client.id, client_key)
    finally:
        await engine.dispose()
    return clients


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A ``referral serve`` process on a fresh SQLite database, and an access token for each party kind."""
    directory: Path = tmp_path_factory.mktemp("contract")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'referral.sqlite3'}",
        var_dir=directory / "var",
        public_url=url,
    )
    migrations.upgrade(settings.database_url)
    clients = run_blocking(lambda: _seed(settings))
    environment = {
        **os.environ,
        "REFERRAL_DATABASE_URL": settings.database_url,
        "REFERRAL_VAR_DIR": str(settings.var_dir),
        "REFERRAL_PUBLIC_URL": url,
        "REFERRAL_PORT": str(port),
        "REFERRAL_RATE_LIMIT_PER_SECOND": "0",
        "REFERRAL_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "referral", "serve"], env=environment, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        tokens = {}
        for kind, (client_id, key) in clients.items():
            assertion = client_assertion(client_id, key, audience=f"{url}/oauth/token")
            response = requests.post(f"{url}/oauth/token", data=token_form(assertion), timeout=10)
            tokens[kind] = response.json()["access_token"]
        yield {"url": url, "tokens": tokens}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@schema.parametrize()
@hypothesis_settings(
    max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
def test_the_service_keeps_its_published_contract(
    case: schemathesis.Case, live: dict[str, Any], kind: str
) -> None:
    headers = {"Authorization": f"Bearer {live['tokens'][kind]}"}
    wait = str((case.query or {}).get("wait", ""))
    if case.path == "/v1/feed" and wait.isdigit() and int(wait) > 1:
        case.query["wait"] = 1  # long polls are tested elsewhere; here they would only make the run slow
    case.call_and_validate(base_url=live["url"], headers=headers, checks=CHECKS)
