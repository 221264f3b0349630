"""Crash safety on PostgreSQL.

The service is SIGKILLed, and separately PostgreSQL restarts in immediate mode, while authorities submit
concurrently. After recovery every acknowledged submission is there with its JWS and audit entry, nothing is
half-written, the log's leaf indexes are exactly 0..n-1, the first checkpoint after recovery is consistent
with the last one before, fsck passes, and retries with the same Idempotency-Key had one effect each.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from referral.audit.fsck import fsck
from referral.audit.merkle import verify_consistency
from referral.audit.models import AuditEntry, AuditLeaf, AuditPending
from referral.config import Settings
from referral.core.appkeys import service_keys_key, sessionmaker_key
from referral.feed.models import OutboxEvent
from referral.referrals.models import Referral, ReferralItem
from tests.auth.factories import TestParty, access_token, make_party, sign_document
from tests.referrals.test_api import referral_claims

pytestmark = pytest.mark.slow

WRITERS = 6


def local_cluster() -> tuple[str, str] | None:
    """``pg_ctlcluster`` and the version of the local cluster, when PostgreSQL runs on this machine."""
    command = shutil.which("pg_ctlcluster")
    if command is None or not os.path.isdir("/etc/postgresql"):
        return None
    versions = os.listdir("/etc/postgresql")
    return (command, versions[0]) if len(versions) == 1 else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(settings: Settings, backend: str) -> Settings:
    if backend != "postgresql":
        pytest.skip("crash recovery is tested on PostgreSQL, the multi-process deployment")
    return settings.model_copy(
        update={"public_url": f"http://127.0.0.1:{free_port()}", "run_background_tasks": False}
    )


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``referral serve`` as a separate process on the test's database (background tasks on)."""
    port = int(settings.public_url.rsplit(":", 1)[1])
    environment = {
        **os.environ,
        "REFERRAL_DATABASE_URL": settings.database_url,
        "REFERRAL_VAR_DIR": str(settings.var_dir),
        "REFERRAL_PUBLIC_URL": settings.public_url,
        "REFERRAL_PORT": str(port),
        "REFERRAL_RATE_LIMIT_PER_SECOND": "0",
        "REFERRAL_AUDIT_BATCH_INTERVAL_MS": "20",
        "REFERRAL_LOG_LEVEL": "warning",
        "REFERRAL_IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS": "3",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for with a bounded poll
        [sys.executable, "-m", "referral", "serve"], env=environment, stderr=subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{settings.public_url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@dataclass
class Submission:
    key: str
    compact: str
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)


async def post(http: aiohttp.ClientSession, url: str, token: str, submission: Submission) -> None:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/jose",
        "Idempotency-Key": submission.key,
    }
    async with http.post(f"{url}/v1/referrals", data=submission.compact, headers=headers) as response:
        submission.body = await response.json(content_type=None)
        submission.status = response.status


async def writer(
    url: str,
    token: str,
    authority: TestParty,
    provider: TestParty,
    stop: asyncio.Event,
    log: list[Submission],
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while not stop.is_set():
            submission = Submission(
                key=uuid.uuid4().hex, compact=sign_document(authority, referral_claims(authority, provider))
            )
            log.append(submission)
            try:
                await post(http, url, token, submission)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.05)


async def latest_checkpoint(url: str, token: str) -> tuple[int, bytes] | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/audit/checkpoint", headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        if response.status != 200:
            return None
        lines = (await response.text()).split("\n")
        return int(lines[1]), base64.b64decode(lines[2])


async def run_crash(
    client: TestClient[Any, Any],
    settings: Settings,
    crash: Callable[[subprocess.Popen[bytes]], Awaitable[None]],
) -> None:
    authority = await make_party(client, kind="authority")
    provider = await make_party(client, kind="provider")
    token = await access_token(client, authority)
    url = settings.public_url
    submissions: list[Submission] = []
    before: tuple[int, bytes] | None = None
    async with service(settings) as process:
        stop = asyncio.Event()
        writers = [
            asyncio.create_task(writer(url, token, authority, provider, stop, submissions))
            for _ in range(WRITERS)
        ]
        await asyncio.sleep(1.5)
        before = await latest_checkpoint(url, token)
        await asyncio.sleep(0.5)
        await crash(process)
        stop.set()
        await asyncio.gather(*writers)
    assert before is not None
    acknowledged = [one for one in submissions if one.status in (200, 201)]
    # No answer, or a 5xx (the database went away mid-request): the client cannot know, so it retries.
    unanswered = [one for one in submissions if one.status is None or one.status >= 500]
    assert len(acknowledged) > 10

    async with service(settings):
        # Clients retry what got no answer, with the same Idempotency-Key: one effect each.
        async with aiohttp.ClientSession() as http:
            for submission in unanswered:
                # A key claimed by a request the crash cut off is "in progress" (409) until its claim times
                # out; a client honours Retry-After and tries again.
                async with asyncio.timeout(30):
                    await post(http, url, token, submission)
                    while submission.status == 409:
                        await asyncio.sleep(1)
                        await post(http, url, token, submission)
                assert submission.status in (200, 201), submission.body
            for submission in acknowledged[:3]:
                first = submission.body["referral"]["id"]
                await post(http, url, token, submission)
                assert submission.body["referral"]["id"] == first
        async with asyncio.timeout(60):
            while True:
                async with client.server.app[sessionmaker_key]() as session:  # type: ignore[index]
                    if not await session.scalar(select(func.count()).select_from(AuditPending)):
                        break
                await asyncio.sleep(0.1)
        after = await latest_checkpoint(url, token)
        assert after is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{url}/v1/audit/proof/consistency",
                params={"first": str(before[0]), "second": str(after[0])},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            proof = [base64.b64decode(one) for one in (await response.json())["hashes"]]
        verify_consistency(before[0], after[0], proof, before[1], after[1])

    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        for submission in (*acknowledged, *unanswered):
            referral = await session.get(Referral, submission.body["referral"]["id"])
            assert referral is not None, "an acknowledged submission is missing"
            assert referral.jws == submission.compact
            assert await session.get(AuditEntry, referral.audit_entry_id) is not None
        referrals = list((await session.execute(select(Referral))).scalars())
        assert len(referrals) == len({one.body["referral"]["id"] for one in (*acknowledged, *unanswered)}), (
            "a referral exists that no client was told about, or one was recorded twice"
        )
        for referral in referrals:
            items = await session.scalar(
                select(func.count()).select_from(ReferralItem).where(ReferralItem.referral_id == referral.id)
            )
            events = await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.referral_id == referral.id, OutboxEvent.type == "referral.submitted")
            )
            assert (items, events) == (referral.item_count, 2), "a half-written referral"
        count, low, high = (
            await session.execute(
                select(func.count(), func.min(AuditLeaf.leaf_index), func.max(AuditLeaf.leaf_index))
            )
        ).one()
        assert (low, high) == (0, count - 1)
        report = await fsck(session, keys=app[service_keys_key], origin=settings.audit_origin)
        assert report.ok, report.problems


async def test_sigkill_of_the_service_loses_nothing(client: TestClient[Any, Any], settings: Settings) -> None:
    async def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)

    await run_crash(client, settings, kill)


async def test_an_immediate_postgresql_restart_loses_nothing(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    cluster = local_cluster()
    if cluster is None:
        pytest.skip("PostgreSQL is not a local pg_ctlcluster cluster here")
    command, version = cluster

    async def restart(_process: subprocess.Popen[bytes]) -> None:
        restarted = await asyncio.create_subprocess_exec(
            command, "--skip-systemctl-redirect", version, "main", "restart", "-m", "immediate"
        )
        assert await restarted.wait() == 0

    await run_crash(client, settings, restart)
