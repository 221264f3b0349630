"""The guides in ``docs/api/`` are executed, so their examples cannot rot: the Python blocks against a live
service, the operator guide's ``# checked`` shell blocks on a scratch database."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from referral.config import Settings
from tests.client.conftest import LiveService, Party, sdk

REPO = Path(__file__).resolve().parents[2]
GUIDES = REPO / "docs" / "api"


def python_blocks(name: str) -> str:
    text = (GUIDES / name).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"{name} has no Python examples"
    return "\n\n".join(blocks)


def checked_shell_lines(name: str) -> list[str]:
    text = (GUIDES / name).read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n# checked\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"{name} has no checked shell examples"
    return [
        line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")
    ]


def load(name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"guide_{name}"}
    exec(compile(python_blocks(name), str(GUIDES / name), "exec"), namespace)
    return namespace


async def run(function: Callable[..., Any], *args: Any) -> Any:
    """Run a guide's function as a reader would: a script with its own event loop (here in a thread)."""

    def call() -> Any:
        result = function(*args)
        return asyncio.run(result) if asyncio.iscoroutine(result) else result

    return await asyncio.to_thread(call)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True})


@pytest.fixture
def environment(
    live: LiveService, authority: Party, provider: Party, monkeypatch: pytest.MonkeyPatch
) -> pytest.MonkeyPatch:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REFERRAL_URL", live.url)
    monkeypatch.setenv("AUTHORITY_PROFILE", str(authority.profile))
    monkeypatch.setenv("PROVIDER_ID", provider.party_id)
    return monkeypatch


async def test_provider_guide(environment: pytest.MonkeyPatch, authority: Party, provider: Party) -> None:
    environment.setenv("REFERRAL_PROFILE", str(provider.profile))
    guide = load("provider-guide.md")
    outcome = await run(guide["worked_example"])
    assert outcome["status"] == "action_taken"
    assert outcome["deadline"]
    assert outcome["receipt"]["status"] == "action_taken"
    ping = await run(guide["receive_a_ping"])
    assert ping["type"] == "webhook.ping"
    # The pull loop sees the worked example's order again and handles the repeat without harm.
    assert len(await run(guide["handle_new_work"])) == 1


async def test_authority_guide(
    environment: pytest.MonkeyPatch, live: LiveService, authority: Party, provider: Party
) -> None:
    environment.setenv("REFERRAL_PROFILE", str(authority.profile))
    guide = load("authority-guide.md")
    submitted = await run(guide["submit_removal_order"])
    assert submitted["deadline"] > submitted["received_at"]
    assert await run(guide["my_open_cases"]) == ["submitted"]

    # The provider guide's pull loop picks the order up.
    environment.setenv("REFERRAL_PROFILE", str(provider.profile))
    assert await run(load("provider-guide.md")["handle_new_work"]) == [submitted["referral_id"]]


async def test_audit_verification_guide(
    environment: pytest.MonkeyPatch, live: LiveService, authority: Party, provider: Party
) -> None:
    environment.setenv("REFERRAL_PROFILE", str(authority.profile))
    submitted = await run(load("authority-guide.md")["submit_removal_order"])
    async with sdk(live, authority) as client:
        referral = await client.get_referral(submitted["referral_id"])
        token = await client.access_token()
        # The sequencer runs in the background: wait until the entry is in a signed checkpoint.
        async with asyncio.timeout(30):
            while True:
                try:
                    await client.prove_entry(submitted["audit_entry_id"])
                    break
                except Exception:  # noqa: BLE001 - not sequenced yet
                    await asyncio.sleep(0.1)
    environment.setenv("RECEIPT", referral["receipt"])
    verified = await run(load("audit-verification.md")["verify_by_hand"], token)
    assert verified["action"] == "referral.submitted"
    assert verified["tree_size"] >= 1


def test_operator_guide(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "REFERRAL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'referral.sqlite3'}",
        "REFERRAL_VAR_DIR": str(tmp_path / "var"),
        "REFERRAL_LOG_FORMAT": "json",
    }
    for line in checked_shell_lines("operator-guide.md"):
        command = shlex.split(line, comments=True)
        assert command[0] == "referral", line
        result = subprocess.run(
            [sys.executable, "-m", "referral", *command[1:]],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (line, result.stdout, result.stderr)
