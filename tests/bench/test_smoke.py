"""``make bench`` in smoke mode: the harness runs end to end and writes well-formed results.

Only that it ran is asserted, never how fast: the figures of a few seconds on a shared machine mean nothing,
and the full run (``make bench``) is where they are read. PostgreSQL is included when it is reachable (and
required with ``REFERRAL_REQUIRE_POSTGRES=1``, as everywhere in this suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.harness import postgres_unavailable

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"single", "single_half_rate", "batch100", "status", "feed", "audit_proof", "stats"}
LATENCY_KEYS = {"p50", "p90", "p99", "max", "mean"}


def _backends() -> list[str]:
    reason = postgres_unavailable()
    if reason is None:
        return ["sqlite", "postgresql"]
    if os.environ.get("REFERRAL_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REFERRAL_REQUIRE_POSTGRES=1 but {reason}")
    return ["sqlite"]


def _check_phase(phase: dict[str, Any]) -> None:
    assert phase["target"] in {"full", "bare"}
    if "skipped" in phase:
        assert phase["scenario"] == "stats"  # the only scenario that may be missing (GET /v1/stats)
        assert phase["seed"]["referrals"] > 0  # the bulk seeder still ran
        return
    assert phase["requests"] > 0
    # Errors are counted, not judged: SQLite may refuse a write under concurrency ("database is locked").
    assert phase["ok"] > 0, phase["statuses"]
    assert phase["ok"] + phase["errors"] >= phase["requests"]
    assert phase["throughput_rps"] > 0
    latency = phase["delivery_latency_ms"] if phase["scenario"] == "feed" else phase["latency_ms"]
    assert set(latency) == LATENCY_KEYS
    assert all(value >= 0 for value in latency.values())
    assert phase["server"]["rss_mb_max_per_process"] > 0
    assert phase["server"]["processes"] >= 1
    if phase["scenario"] == "feed":
        assert phase["events_missing"] == 0
        assert phase["events_delivered"] == phase["ok"]
    if phase["scenario"] == "batch100":
        assert phase["items_per_request"] == 100


@pytest.mark.slow
def test_smoke_run_produces_well_formed_results(tmp_path: Path) -> None:
    backends = _backends()
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--backends", ",".join(backends), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert "| db | scenario | target |" in completed.stdout

    written = sorted(path.name for path in tmp_path.iterdir())
    assert "latest-smoke.json" in written
    assert any(name.endswith("-smoke.json") and name != "latest-smoke.json" for name in written)
    document = json.loads((tmp_path / "latest-smoke.json").read_text())
    assert document["mode"] == "smoke"
    assert document["machine"]["cores"] >= 1
    assert [run["backend"] for run in document["runs"]] == backends
    for run in document["runs"]:
        assert {phase["scenario"] for phase in run["phases"]} == SCENARIOS
        assert {phase["target"] for phase in run["phases"] if phase["scenario"] == "single"} == {
            "full",
            "bare",
        }
        for phase in run["phases"]:
            _check_phase(phase)
        assert run["ratio"] is not None
        assert run["ratio"] > 0
        assert run["targets"]
        assert all(check["met"] in (True, False, None) for check in run["targets"])
