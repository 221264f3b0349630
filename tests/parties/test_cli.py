"""The operator's command line has the same effect as the API, and bootstraps the first operator."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from jwcrypto import jwk
from sqlalchemy import select

from referral.app import create_app
from referral.audit.models import AuditEntry
from referral.cli import build_parser
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.parties.models import ApiClient, Party, PartyKey
from tests.auth.factories import (
    bearer,
    client_assertion,
    make_party,
    new_key,
    public_jwk,
    token_endpoint,
    token_form,
)


async def _run(settings: Settings, *argv: str) -> tuple[int, str]:
    """Run a ``referral`` command in a thread (it runs its own event loop), capturing stdout."""
    args = build_parser().parse_args(list(argv))
    output = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(output):
            return int(args.run(args, settings))

    status = await asyncio.to_thread(run)
    # stdout is redirected process-wide, so log lines of the app running meanwhile may be captured too:
    # the command's own result is its last JSON line.
    results = [line for line in output.getvalue().splitlines() if line.startswith("{")]
    return status, results[-1] if results else ""


async def _rows(client: TestClient[Any, Any], statement: Any) -> list[Any]:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        return list((await session.execute(statement)).scalars())


async def test_parties_keys_and_clients_commands(
    client: TestClient[Any, Any], settings: Settings, tmp_path: Path
) -> None:
    status, output = await _run(
        settings, "parties", "add", "--kind", "provider", "--name", "Host", "--country", "IE"
    )
    assert status == 0
    party_id = json.loads(output)["id"]
    key_file = tmp_path / "key.json"
    signing = new_key("EC")
    key_file.write_text(json.dumps(public_jwk(signing)))

    status, output = await _run(settings, "keys", "add", "--party", party_id, "--jwk", str(key_file))
    assert status == 0
    assert json.loads(output) == {"kid": signing.thumbprint()}
    status, output = await _run(
        settings, "keys", "revoke", "--party", party_id, f"--kid={signing.thumbprint()}", "--reason", "test"
    )
    assert status == 0
    client_key = new_key()
    key_file.write_text(json.dumps(public_jwk(client_key)))
    status, output = await _run(
        settings, "clients", "add", "--party", party_id, "--jwk", str(key_file), "--name", "bot"
    )
    assert status == 0
    client_id = json.loads(output)["client_id"]

    [party] = await _rows(client, select(Party).where(Party.id == party_id))
    assert (party.kind, party.name, party.country) == ("provider", "Host", "IE")
    [key] = await _rows(client, select(PartyKey).where(PartyKey.party_id == party_id))
    assert key.revoked_at is not None
    assert key.revocation_reason == "test"
    [api_client] = await _rows(client, select(ApiClient).where(ApiClient.id == client_id))
    assert api_client.name == "bot"
    actions = [e.action for e in await _rows(client, select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == ["party.created", "party_key.added", "party_key.revoked", "client.added"]
    # The client registered on the command line authenticates over HTTP.
    assertion = client_assertion(client_id, client_key, audience=token_endpoint(client))
    assert (await client.post("/oauth/token", data=token_form(assertion))).status == 200


async def test_cli_refuses_private_keys_and_bad_countries(
    client: TestClient[Any, Any], settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = await _run(
        settings, "parties", "add", "--kind", "provider", "--name", "Host", "--country", "ZZ"
    )
    assert status == 1
    status, output = await _run(
        settings, "parties", "add", "--kind", "provider", "--name", "H", "--country", "FR"
    )
    key_file = tmp_path / "private.json"
    key_file.write_text(new_key().export_private())
    status, _ = await _run(
        settings, "keys", "add", "--party", json.loads(output)["id"], "--jwk", str(key_file)
    )
    assert status == 1
    assert "private key material" in capsys.readouterr().err
    assert await _rows(client, select(PartyKey)) == []


async def test_operator_bootstrap_writes_a_0600_key_that_obtains_an_admin_token(
    client: TestClient[Any, Any], settings: Settings, tmp_path: Path
) -> None:
    key_path = tmp_path / "secrets" / "operator.jwk"
    status, output = await _run(
        settings, "operator", "bootstrap", "--country", "DE", "--key-file", str(key_path)
    )

    assert status == 0
    result = json.loads(output)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    private = jwk.JWK.from_json(key_path.read_text())
    assert private.has_private
    assertion = client_assertion(result["client_id"], private, audience=token_endpoint(client))
    response = await client.post("/oauth/token", data=token_form(assertion))
    assert response.status == 200
    assert "parties:admin" in (await response.json())["scope"]
    [operator] = await _rows(client, select(Party).where(Party.id == result["party_id"]))
    assert operator.kind == "operator"

    again, _ = await _run(
        settings, "operator", "bootstrap", "--country", "DE", "--key-file", str(tmp_path / "x")
    )
    assert again == 1
    assert not (tmp_path / "x").exists()


async def test_service_key_rotate_keeps_the_old_key_published_and_old_tokens_valid(
    client: TestClient[Any, Any], settings: Settings, aiohttp_client: Any
) -> None:
    provider = await make_party(client)
    headers = await bearer(client, provider)
    old_kid = (await (await client.get("/.well-known/jwks.json")).json())["keys"][0]["kid"]

    status, output = await _run(settings, "service-key", "rotate")

    assert status == 0
    rotated = json.loads(output)
    assert rotated["retired"] == [old_kid]
    assert stat.S_IMODE(settings.service_key_path.stat().st_mode) == 0o600
    restarted = await aiohttp_client(create_app(settings))
    jwks = await (await restarted.get("/.well-known/jwks.json")).json()
    assert [key["kid"] for key in jwks["keys"]] == [rotated["active"], old_kid]
    assert (await restarted.get("/v1/parties", headers=headers)).status == 200
