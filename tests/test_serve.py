"""``referral serve --workers N``: several API processes on one port (SO_REUSEPORT), PostgreSQL only."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from referral import cli
from referral.cli import build_parser
from referral.config import Settings
from tests.conftest import PostgresDatabases

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_several_workers_are_refused_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}", log_format="json")
    for workers in ("2", "0"):
        # Run the command without main(), which would point the process's logging at pytest's capture.
        args = build_parser().parse_args(["serve", "--workers", workers])
        assert args.run(args, settings) == 2
    assert "PostgreSQL" in capsys.readouterr().err


def test_a_served_app_freezes_its_startup_heap_after_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector's full collections then skip what start-up made (they stopped the event loop for
    70-85 ms each under the bench's load; 2-3 ms since)."""
    served: list[object] = []
    monkeypatch.setattr("aiohttp.web.run_app", lambda app, **_options: served.append(app))
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}", log_format="json")
    cli._serve_one(settings, reuse_port=False)
    (app,) = served
    assert list(app.on_startup)[-1] is cli.freeze_startup_heap  # type: ignore[attr-defined]

    assert gc.get_freeze_count() == 0
    try:
        asyncio.run(cli.freeze_startup_heap(app))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_workers_share_the_port_and_stop_together(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    url = postgres_databases.copy()
    port = _free_port()
    env = {
        **os.environ,
        "REFERRAL_DATABASE_URL": url,
        "REFERRAL_VAR_DIR": str(tmp_path / "var"),
        "REFERRAL_LOG_FORMAT": "json",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "referral", "serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        ready = 0
        while time.monotonic() < deadline and ready < 5:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    ready += answer.status == 200
            except OSError:
                time.sleep(0.2)
        assert ready == 5, "the workers did not answer"
        assert len(_children(server.pid)) == 2
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        postgres_databases.drop(url)
