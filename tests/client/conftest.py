"""A live service on a real socket (the SDK talks HTTP to it like any integration) and parties to act as."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from referral.app import create_app
from referral.cli import build_parser
from referral.client import Credentials, PrivateJwk, ReferralClient, RetryPolicy, generate_key
from referral.config import Settings
from referral.core.appkeys import sessionmaker_key
from referral.parties import service

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "api" / "examples"
# Tests retry quickly: the behaviour is the same, the waits are not what is tested.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Drop the service's log lines: the CLI's stdout is captured process-wide while it runs."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.configure(**saved)


@dataclass(frozen=True)
class LiveService:
    """A running service: its URL, app and settings."""

    url: str
    app: web.Application
    settings: Settings


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveService]:
    """The app served on 127.0.0.1 at a port chosen before start, so its public URL (the token audience)
    is the address clients use."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    live_settings = settings.model_copy(update={"public_url": url})
    app = create_app(live_settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    try:
        yield LiveService(url=url, app=app, settings=live_settings)
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class Party:
    """A registered party, its credentials, and a 0600 profile file holding them."""

    party_id: str
    kind: str
    name: str
    credentials: Credentials
    profile: Path


async def register_party(
    live: LiveService, directory: Path, *, kind: str, key_type: str = "ed25519", name: str | None = None
) -> Party:
    """Register a party with a signing key and an API client, keys made by the SDK's ``generate_key``."""
    signing: PrivateJwk = generate_key("p256" if key_type == "p256" else "ed25519")
    client_key: PrivateJwk = generate_key()
    name = name or f"{kind} {uuid.uuid4().hex[:8]}"
    async with live.app[sessionmaker_key].begin() as session:
        party = await service.create_party(
            session, kind=kind, name=name, country="DE", contact=f"{kind}@example.org", actor=service.Actor()
        )
        await service.add_key(
            session,
            party_id=party.id,
            jwk=signing.public_jwk(),
            not_before=None,
            not_after=None,
            actor=service.Actor(),
        )
        api_client = await service.add_client(
            session, party_id=party.id, jwk=client_key.public_jwk(), name="sdk test", actor=service.Actor()
        )
    profile = directory / f"{kind}-{party.id}.json"
    descriptor = os.open(profile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "url": live.url,
                "party_id": party.id,
                "client_id": api_client.id,
                "client_key": client_key.private_jwk(),
                "signing_key": signing.private_jwk(),
            },
            handle,
        )
    credentials = Credentials(
        party_id=party.id, client_id=api_client.id, client_key=client_key, signing_key=signing
    )
    return Party(party_id=party.id, kind=kind, name=name, credentials=credentials, profile=profile)


@pytest.fixture
async def authority(live: LiveService, tmp_path: Path) -> Party:
    """An authority signing with Ed25519."""
    return await register_party(live, tmp_path, kind="authority")


@pytest.fixture
async def provider(live: LiveService, tmp_path: Path) -> Party:
    """A provider signing with P-256."""
    return await register_party(live, tmp_path, kind="provider", key_type="p256", name="Example Video Host")


def sdk(live: LiveService, party: Party) -> ReferralClient:
    """An SDK client of the live service acting as ``party``."""
    return ReferralClient(live.url, party.credentials, retry=FAST_RETRY)


def removal_order(addressee: str, **changes: Any) -> dict[str, Any]:
    """The example removal order as a party would write it: content only (no iss, iat, jti)."""
    document: dict[str, Any] = json.loads((EXAMPLES / "removal_order.json").read_text(encoding="utf-8"))
    for signed_by_the_sdk in ("iss", "iat", "jti"):
        document.pop(signed_by_the_sdk)
    document.pop("confidentiality")
    document.update(addressee=addressee, **changes)
    return document


async def eventually(check: Callable[[], Awaitable[Any]], *, attempts: int = 300) -> Any:
    """The result of ``check`` once it stops raising (e.g. after the sequencer ran); else its last error."""
    for _ in range(attempts - 1):
        with contextlib.suppress(Exception):
            return await check()
        await asyncio.sleep(0.1)
    return await check()


@dataclass(frozen=True)
class CliResult:
    """What a command did: exit status, stdout and stderr."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout as one JSON document."""
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        """stdout as JSON lines."""
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def run_cli(settings: Settings, *argv: str) -> CliResult:
    """Run a ``referral`` command in a thread (it runs its own event loop), capturing stdout and stderr."""
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return int(args.run(args, settings))

    status = await asyncio.to_thread(run)
    return CliResult(status=status, out=out.getvalue(), err=err.getvalue())
