"""The benchmark harness: ``python -m bench [--smoke] [--backends sqlite,postgresql] ...`` (``make bench``).

Per database it creates a fresh database (PostgreSQL: ``referral_bench_<pid>_<hex>``, dropped afterwards;
SQLite: a file in a temporary folder), migrates it, registers authorities and providers with Ed25519 keys
and API clients, starts ``referral serve`` and, separately, the bare reference (``bench.bare``), pre-signs the
documents, and drives every scenario with ``bench.load`` in its own process. While a phase runs, the CPU time
and RSS of the server's processes are read from ``/proc``. It prints one table and writes the whole run as
JSON to ``bench/results/`` (``--out`` elsewhere).

Timings are never asserted here: the targets are reported as met or missed, with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text

from bench import seed as seeder
from bench.load import http_request, write_requests
from referral.config import Settings
from referral.core import migrations
from referral.core.db import create_engine, create_sessionmaker
from referral.parties import service as party_service
from referral.parties.service import Actor

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EXAMPLES = ROOT / "docs" / "api" / "examples"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_KB = 4

TARGETS = {
    "single_ratio": 0.6,
    "batch_docs_per_s": 10_000,
    "half_rate_p99_ms": 50.0,
    "feed_p99_ms": 100.0,
    "stats_s": 0.5,
    "rss_mb": 300.0,
    "sqlite_max_ms": 1000.0,
}


@dataclass(frozen=True)
class Profile:
    """How long and how hard each phase runs."""

    warmup: float
    duration: float
    concurrencies: tuple[int, ...]
    batch_concurrencies: tuple[int, ...]
    status_concurrencies: tuple[int, ...]
    feed_rate: float
    feed_duration: float
    proof_concurrency: int
    stats_referrals: int
    stats_requests: int
    single_cap_rps: float
    batch_cap_docs: float
    status_cap_rps: float
    authorities: int
    providers: int


FULL = Profile(
    warmup=1.0,
    duration=5.0,
    concurrencies=(8, 32, 64),
    batch_concurrencies=(2, 8),
    status_concurrencies=(8, 32),
    feed_rate=200.0,
    feed_duration=5.0,
    proof_concurrency=32,
    stats_referrals=1_000_000,
    stats_requests=5,
    single_cap_rps=3_500,
    batch_cap_docs=14_000,
    status_cap_rps=2_500,
    authorities=4,
    providers=4,
)
SMOKE = Profile(
    warmup=0.2,
    duration=0.8,
    concurrencies=(4,),
    batch_concurrencies=(2,),
    status_concurrencies=(4,),
    feed_rate=20.0,
    feed_duration=1.0,
    proof_concurrency=4,
    stats_referrals=2_000,
    stats_requests=2,
    # Above what the fastest closed loop here can do: a budget a phase used up during its warm-up left it
    # nothing to measure (the bare app on PostgreSQL does ~2 900 requests a second on this kind of machine).
    single_cap_rps=4_000,
    batch_cap_docs=3_000,
    status_cap_rps=1_500,
    authorities=2,
    providers=2,
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Signer:
    """A party's Ed25519 key pair, used for signed documents or client assertions."""

    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = ""

    @property
    def public_jwk(self) -> dict[str, str]:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}

    def compact(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """A compact JWS of ``claims``."""
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        )
        return signing_input + "." + _b64url(self.private.sign(signing_input.encode("ascii")))


@dataclass
class Party:
    """A registered party with its signing key and API client."""

    party_id: str
    kind: str
    signing: Signer
    client_id: str
    client: Signer
    token: str = ""


# --- databases --------------------------------------------------------------------------------------------


def _postgres_admin_url() -> str:
    return os.environ.get(
        "REFERRAL_BENCH_POSTGRES_URL", os.environ.get("REFERRAL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )


async def _pg_admin(*statements: str) -> list[Any]:
    url = _postgres_admin_url().replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(url, timeout=5)
    try:
        return [await connection.fetchval(statement) for statement in statements]
    finally:
        await connection.close()


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        return f"PostgreSQL at {_postgres_admin_url()} is unreachable: {exc!r}"
    return None


@contextlib.contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh database at head; PostgreSQL ones are dropped on the way out."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
        migrations.upgrade(url)
        yield url
        return
    name = f"referral_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    admin = _postgres_admin_url()
    url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        migrations.upgrade(url)
        yield url
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _register(url: str, profile: Profile) -> tuple[list[Party], list[Party], Party]:
    """The authorities and providers of the profile, and an observer (it reads aggregate statistics)."""
    engine = create_engine(Settings(database_url=url))
    sessionmaker = create_sessionmaker(engine)
    parties: dict[str, list[Party]] = {"authority": [], "provider": [], "observer": []}
    kinds = (("authority", profile.authorities), ("provider", profile.providers), ("observer", 1))
    try:
        async with sessionmaker.begin() as session:
            for kind, count in kinds:
                for number in range(count):
                    party = await party_service.create_party(
                        session,
                        kind=kind,
                        name=f"bench {kind} {number}",
                        country="DE" if kind == "authority" else "IE",
                        contact=f"{kind}{number}@bench.example",
                        actor=Actor(),
                    )
                    signing, client = Signer(), Signer()
                    if kind != "observer":  # observers sign nothing
                        key = await party_service.add_key(
                            session,
                            party_id=party.id,
                            jwk=signing.public_jwk,
                            not_before=datetime.now(UTC) - timedelta(minutes=5),
                            not_after=None,
                            actor=Actor(),
                        )
                        signing.kid = key.kid
                    api_client = await party_service.add_client(
                        session, party_id=party.id, jwk=client.public_jwk, name="bench", actor=Actor()
                    )
                    parties[kind].append(Party(party.id, kind, signing, api_client.id, client))
    finally:
        await engine.dispose()
    return parties["authority"], parties["provider"], parties["observer"][0]


async def _fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(query))]
    finally:
        await engine.dispose()


def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the bench database (the harness's own look-ups, never on a measured path)."""
    return asyncio.run(_fetch(url, query))


# --- processes ----------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    return 0


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """CPU time and RSS of a server process and its children while a phase runs (``/proc``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pids: list[int] = []
        self._ticks_before: dict[int, int] = {}
        self._ticks_last: dict[int, int] = {}
        self.rss_max_mb = 0.0
        self.rss_total_max_mb = 0.0
        self._started = 0.0
        self.elapsed = 0.0

    def _sample(self) -> None:
        for pid in self._pids:
            self._ticks_last[pid] = _cpu_ticks(pid) or self._ticks_last.get(pid, 0)
        rss = [_rss_mb(pid) for pid in self._pids]
        self.rss_max_mb = max([self.rss_max_mb, *rss])
        self.rss_total_max_mb = max(self.rss_total_max_mb, sum(rss))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> Sampler:
        self._pids = [self.pid, *_children(self.pid)]
        self._ticks_before = {pid: _cpu_ticks(pid) for pid in self._pids}
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        self.elapsed = time.monotonic() - self._started

    @property
    def cpu_seconds(self) -> float:
        return (
            sum(self._ticks_last.get(pid, 0) - before for pid, before in self._ticks_before.items()) / CLK_TCK
        )

    @property
    def processes(self) -> int:
        return len(self._pids)


class Server:
    """A server process (the service or the bare reference) on a free port."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.command, self.env, self.port, self.log = name, command, env, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as answer,
            ):
                if answer.status == 200:
                    time.sleep(0.3)  # let every worker of a multi-process server bind
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not answer /healthz within 60 s; see {self.log}")

    def __exit__(self, *_exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def _http_json(method: str, url: str, *, token: str | None = None, data: bytes | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read() or b"null")


def obtain_token(base: str, party: Party) -> str:
    """An access token for the party's client, from ``POST /oauth/token`` (``private_key_jwt``)."""
    now = int(time.time())
    assertion = party.client.compact(
        {"alg": "EdDSA", "typ": "JWT"},
        {
            "iss": party.client_id,
            "sub": party.client_id,
            "aud": base + "/oauth/token",
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        },
    )
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    _status, body = _http_json("POST", base + "/oauth/token", data=form)
    return str(body["access_token"])


# --- documents ----------------------------------------------------------------------------------------------


class Documents:
    """Pre-signed, realistic documents: the removal order example with fresh ids, URLs and hashes."""

    def __init__(self, authorities: list[Party], providers: list[Party]) -> None:
        self.authorities, self.providers = authorities, providers
        self.template = json.loads((EXAMPLES / "removal_order.json").read_text(encoding="utf-8"))
        self.template["confidentiality"]["do_not_inform_until"] = (
            (datetime.now(UTC) + timedelta(days=40)).date().isoformat()
        )
        self.status_template = json.loads((EXAMPLES / "status-acknowledged.json").read_text(encoding="utf-8"))
        self.count = 0

    def referral(self, authority: Party, provider: Party) -> str:
        """One signed removal order from ``authority`` to ``provider`` with unique items."""
        self.count += 1
        unique = uuid.uuid4().hex
        claims = dict(self.template)
        claims.update(iss=authority.party_id, addressee=provider.party_id, iat=int(time.time()), jti=unique)
        claims["items"] = [
            {**item, "url": f"{item['url']}&bench={unique}{position}"}
            | ({"content_sha256": uuid.uuid4().hex + uuid.uuid4().hex} if "content_sha256" in item else {})
            for position, item in enumerate(self.template["items"])
        ]
        header = {"alg": "EdDSA", "typ": "referral+jws", "kid": authority.signing.kid}
        return authority.signing.compact(header, claims)

    def pair(self, number: int) -> tuple[Party, Party]:
        """The (authority, provider) of the ``number``-th document: every pair in turn."""
        authority = self.authorities[number % len(self.authorities)]
        provider = self.providers[(number // len(self.authorities)) % len(self.providers)]
        return authority, provider

    def status(self, provider: Party, referral_id: str) -> str:
        """A signed ``acknowledged`` status of ``provider`` for ``referral_id``."""
        claims = dict(self.status_template)
        claims.update(
            iss=provider.party_id, iat=int(time.time()), jti=uuid.uuid4().hex, referral_id=referral_id
        )
        header = {"alg": "EdDSA", "typ": "status+jws", "kid": provider.signing.kid}
        return provider.signing.compact(header, claims)


def _host(port: int) -> str:
    return f"127.0.0.1:{port}"


def single_requests(
    documents: Documents, port: int, count: int, *, provider: Party | None = None
) -> Iterator[bytes]:
    """``count`` raw ``POST /v1/referrals`` requests, each a new document, each with its authority's token."""
    for number in range(count):
        authority, addressee = documents.pair(number)
        addressee = provider or addressee
        compact = documents.referral(authority, addressee).encode()
        yield http_request(
            "POST",
            "/v1/referrals",
            host=_host(port),
            headers={"Authorization": f"Bearer {authority.token}", "Content-Type": "application/jose"},
            body=compact,
        )


def batch_requests(documents: Documents, port: int, count: int, size: int) -> Iterator[bytes]:
    """``count`` raw batch requests of ``size`` documents from one authority to the providers in turn."""
    for number in range(count):
        authority = documents.authorities[number % len(documents.authorities)]
        compacts = [
            documents.referral(authority, documents.providers[(number + i) % len(documents.providers)])
            for i in range(size)
        ]
        yield http_request(
            "POST",
            "/v1/referrals:batch",
            host=_host(port),
            headers={"Authorization": f"Bearer {authority.token}", "Content-Type": "application/json"},
            body=json.dumps({"documents": compacts}).encode(),
        )


# --- phases -------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Where one backend's run keeps its files and results."""

    backend: str
    workdir: Path
    profile: Profile
    phases: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counter: int = 0
    only: frozenset[str] = frozenset()
    started: float = field(default_factory=time.monotonic)
    profile_to: Path | None = None

    def wants(self, scenario: str) -> bool:
        """Whether the scenario is part of this run (``--only``)."""
        return not self.only or scenario in self.only


def run_load(
    run: Run, server: Server, spec: dict[str, Any], requests: Iterator[bytes] | None
) -> dict[str, Any]:
    """Write the requests, run ``bench.load`` in its own process while sampling the server; the figures."""
    run.counter += 1
    stem = run.workdir / f"phase{run.counter:02d}"
    requests_file = Path(f"{stem}.requests")
    if requests is not None:
        write_requests(requests_file, requests)
    else:
        requests_file = Path(spec["requests_file"])
    spec = {"host": "127.0.0.1", "port": server.port, "requests_file": str(requests_file), **spec}
    spec_file, result_file = Path(f"{stem}.spec.json"), Path(f"{stem}.result.json")
    spec_file.write_text(json.dumps(spec))
    with Sampler(server.pid) as sampler:
        loader = subprocess.Popen(
            [sys.executable, "-m", "bench.load", str(spec_file), str(result_file)], cwd=ROOT
        )
        _pid, status, usage = os.wait4(loader.pid, 0)
        loader.returncode = os.waitstatus_to_exitcode(status)
    if loader.returncode != 0:
        raise RuntimeError(f"the load generator failed ({loader.returncode}) on {spec_file}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    ok = max(result["ok"], 1)
    result["server"] = {
        "processes": sampler.processes,
        "cpu_percent": round(100 * sampler.cpu_seconds / max(sampler.elapsed, 1e-9), 1),
        "cpu_ms_per_request": round(1000 * sampler.cpu_seconds / ok, 3),
        "rss_mb_max_per_process": round(sampler.rss_max_mb, 1),
        "rss_mb_total": round(sampler.rss_total_max_mb, 1),
    }
    result["loader_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    with contextlib.suppress(OSError):
        requests_file.unlink()
    return result


def _record(run: Run, scenario: str, target: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    phase = {"scenario": scenario, "target": target, **result, **extra}
    phase["at_s"] = round(time.monotonic() - run.started, 1)
    run.phases.append(phase)
    latency = result.get("latency_ms", {})
    print(
        f"  {run.backend:<10} {scenario:<16} {target:<5} c={result.get('connections', '-'):<3} "
        f"{result.get('throughput_rps', 0):>8.1f} req/s  {result.get('items_per_s', 0):>9.1f} items/s  "
        f"p50 {latency.get('p50', 0):>7.1f}  p99 {latency.get('p99', 0):>8.1f} ms  "
        f"errors {result.get('errors', 0)}  (t={phase['at_s']} s)",
        flush=True,
    )
    return phase


def _budget(profile: Profile, rate: float) -> int:
    return int((profile.warmup + profile.duration) * rate) + 50


def service_env(run: Run, url: str, port: int) -> dict[str, str]:
    """The environment of ``referral serve`` for the run."""
    return {
        **os.environ,
        "REFERRAL_DATABASE_URL": url,
        "REFERRAL_VAR_DIR": str(run.workdir / "var"),
        "REFERRAL_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "REFERRAL_LOG_FORMAT": "json",
        "REFERRAL_LOG_LEVEL": "info",
        "REFERRAL_ACCESS_TOKEN_TTL_SECONDS": "86400",
        # The load generator is a few clients sending thousands of requests a second: the per-client rate
        # limit would measure itself, not the pipeline.
        "REFERRAL_RATE_LIMIT_PER_SECOND": "0",
        "PYTHONPATH": str(ROOT),
    }


def bare_phases(run: Run, url: str, authorities: list[Party], providers: list[Party], workers: int) -> None:
    """The bare reference at every concurrency of the single-submission scenario."""
    profile = run.profile
    if not run.wants("bare"):
        return
    keys = {party.signing.kid: party.signing.public_jwk for party in authorities}
    keys_file = run.workdir / "bare-keys.json"
    keys_file.write_text(json.dumps(keys))
    port = _free_port()
    command = [
        sys.executable, "-m", "bench.bare", "--port", str(port), "--database-url", url,
        "--keys", str(keys_file), "--workers", str(workers),
    ]  # fmt: skip
    documents = Documents(authorities, providers)
    with Server("bare", command, dict(os.environ), port, run.workdir / "bare.log") as bare:
        for connections in profile.concurrencies:
            result = run_load(
                run,
                bare,
                {"mode": "closed", "connections": connections, "warmup": profile.warmup,
                 "duration": profile.duration},
                single_requests(documents, port, _budget(profile, profile.single_cap_rps)),
            )  # fmt: skip
            _record(run, "single", "bare", result)


@contextlib.contextmanager
def profiled(run: Run, server: Server) -> Iterator[None]:
    """With ``--profile``: py-spy samples the server (and its worker processes) while the phases run, keeping
    the stacks of GIL holders in collapsed form (one line per stack, for flame graphs or a quick sort)."""
    if run.profile_to is None:
        yield
        return
    run.profile_to.mkdir(parents=True, exist_ok=True)
    stacks = run.profile_to / f"{run.backend}-service.txt"
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.pid), "--subprocesses", "--gil", "--rate", "200",
         "--format", "raw", "--output", str(stacks)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        recorder.wait(timeout=60)
        run.notes.append(f"py-spy stacks of the service: {stacks}")


def full_phases(
    run: Run, url: str, authorities: list[Party], providers: list[Party], observer: Party, *, workers: int
) -> None:
    """Every scenario against ``referral serve``."""
    profile = run.profile
    port = _free_port()
    command = [sys.executable, "-m", "referral", "serve", "--port", str(port), "--workers", str(workers)]
    base = f"http://127.0.0.1:{port}"
    with (
        Server("service", command, service_env(run, url, port), port, run.workdir / "service.log") as service,
        profiled(run, service),
    ):
        for party in (*authorities, *providers, observer):
            party.token = obtain_token(base, party)
        documents = Documents(authorities, providers)

        # Single submissions, closed loop, at each concurrency.
        best = 0.0
        for connections in profile.concurrencies if run.wants("single") else ():
            result = run_load(
                run,
                service,
                {"mode": "closed", "connections": connections, "warmup": profile.warmup,
                 "duration": profile.duration},
                single_requests(documents, port, _budget(profile, profile.single_cap_rps)),
            )  # fmt: skip
            _record(run, "single", "full", result)
            best = max(best, result["throughput_rps"])

        # p99 at half the saturated rate, open loop.
        rate = max(best / 2, 1.0)
        if run.wants("single"):
            result = run_load(
                run,
                service,
                {"mode": "open", "rate": rate, "connections": max(profile.concurrencies),
                 "warmup": profile.warmup, "duration": profile.duration},
                single_requests(documents, port, _budget(profile, rate)),
            )  # fmt: skip
            _record(run, "single_half_rate", "full", result)

        # Batches of 100.
        for connections in profile.batch_concurrencies if run.wants("batch") else ():
            count = _budget(profile, profile.batch_cap_docs) // 100 + connections
            result = run_load(
                run,
                service,
                {"mode": "closed", "connections": connections, "warmup": profile.warmup,
                 "duration": profile.duration, "items_per_request": 100},
                batch_requests(documents, port, count, 100),
            )  # fmt: skip
            _record(run, "batch100", "full", result)

        # Status updates (acknowledged) on referrals still submitted.
        by_id = {party.party_id: party for party in providers}
        needed = _budget(profile, profile.status_cap_rps) * len(profile.status_concurrencies)
        targets = fetch(
            url,
            "SELECT id, addressee_id FROM referrals WHERE status = 'submitted' "
            f"ORDER BY received_at DESC LIMIT {needed}",
        )
        random.Random(1).shuffle(targets)
        share = len(targets) // len(profile.status_concurrencies)
        for number, connections in enumerate(profile.status_concurrencies if run.wants("status") else ()):
            mine = targets[number * share : (number + 1) * share]
            requests = (
                http_request(
                    "POST",
                    f"/v1/referrals/{referral_id}/statuses",
                    host=_host(port),
                    headers={"Authorization": f"Bearer {by_id[provider_id].token}",
                             "Content-Type": "application/jose"},
                    body=documents.status(by_id[provider_id], referral_id).encode(),
                )
                for referral_id, provider_id in mine
            )  # fmt: skip
            result = run_load(
                run,
                service,
                {"mode": "closed", "connections": connections, "warmup": profile.warmup,
                 "duration": profile.duration},
                requests,
            )  # fmt: skip
            _record(run, "status", "full", result)

        # Feed: a provider long-polls while submissions to it arrive at a steady rate.
        if run.wants("feed"):
            # A steady load the service sustains (at most half of its measured single-submission rate): the
            # figure is the delivery latency, not what happens to a feed behind an overloaded server.
            rate = min(profile.feed_rate, best / 2) if best else profile.feed_rate
            feed_phase(run, url, service, documents, providers[0], rate=max(rate, 1.0))
        if run.wants("audit_proof"):
            proof_phase(run, url, service, providers[0])
        if run.wants("stats"):
            stats_phase(run, url, service, [authorities[0], providers[0], observer])


def feed_phase(
    run: Run, url: str, service: Server, documents: Documents, reader: Party, *, rate: float
) -> None:
    """A provider long-polls its feed while submissions to it arrive at a steady ``rate``."""
    profile, port = run.profile, service.port
    cursor_rows = fetch(url, f"SELECT last_cursor FROM event_cursors WHERE party_id = '{reader.party_id}'")
    after = cursor_rows[0][0] if cursor_rows else 0
    count = int(rate * profile.feed_duration) + 10
    result = run_load(
        run,
        service,
        # As many connections as the half-rate phase: an open loop whose connections are all waiting holds
        # back the submissions it was meant to send, and measures its own queue instead of the service.
        {"mode": "feed", "rate": rate, "connections": max(profile.concurrencies), "warmup": 0,
         "duration": profile.feed_duration, "reader_token": reader.token, "after": str(after)},
        single_requests(documents, port, count, provider=reader),
    )  # fmt: skip
    _record(run, "feed", "full", result)


def proof_phase(run: Run, url: str, service: Server, reader: Party) -> None:
    """Audit inclusion proofs, once the sequencer has caught up."""
    profile, port = run.profile, service.port
    tree_size = _wait_for_sequencer(url)
    rng = random.Random(2)
    proofs = [
        http_request(
            "GET",
            f"/v1/audit/proof/inclusion?leaf_index={rng.randrange(tree_size)}&tree_size={tree_size}",
            host=_host(port),
            headers={"Authorization": f"Bearer {reader.token}"},
        )
        for _ in range(2000)
    ]
    result = run_load(
        run,
        service,
        {"mode": "closed", "connections": profile.proof_concurrency, "warmup": profile.warmup,
         "duration": profile.duration, "cycle": True},
        iter(proofs),
    )  # fmt: skip
    _record(run, "audit_proof", "full", result, tree_size=tree_size)


def _wait_for_sequencer(url: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pending = fetch(url, "SELECT count(*) FROM audit_pending")[0][0]
        size = fetch(url, "SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints")[0][0]
        if (pending == 0 and size > 0) or time.monotonic() > deadline:
            return int(size)
        time.sleep(0.1)


def stats_phase(run: Run, url: str, service: Server, readers: list[Party]) -> None:
    """``GET /v1/stats`` (the default year, by month) on a database seeded with many referrals, as each reader
    sees it: an authority its own requests, a provider those addressed to it, an observer every party's with
    small cells suppressed; skipped while the endpoint is missing."""
    profile = run.profile
    stats_url = f"http://127.0.0.1:{service.port}/v1/stats"
    try:
        status, _body = _http_json("GET", stats_url, token=readers[0].token)
    except urllib.error.HTTPError as exc:
        status = exc.code
    available = status == 200
    if not available:
        line = f"stats: not available (GET /v1/stats answered {status}); scenario skipped"
        print(f"  {run.backend:<10} {line}", flush=True)
        run.notes.append(line)
        if profile is not SMOKE:
            run.phases.append({"scenario": "stats", "target": "full", "skipped": line})
            return
    seconds = asyncio.run(seeder.seed(url, profile.stats_referrals))
    seeded = {"referrals": profile.stats_referrals, "seconds": round(seconds, 2),
              "rows_per_s": round(profile.stats_referrals / max(seconds, 1e-9))}  # fmt: skip
    print(f"  {run.backend:<10} seeded {profile.stats_referrals} referrals in {seconds:.1f} s", flush=True)
    if not available:
        run.phases.append({"scenario": "stats", "target": "full", "skipped": line, "seed": seeded})
        return
    for reader in readers:
        request = http_request(
            "GET", "/v1/stats", host=_host(service.port), headers={"Authorization": f"Bearer {reader.token}"}
        )
        result = run_load(
            run,
            service,
            {"mode": "closed", "connections": 1, "warmup": 0, "duration": 60.0},
            iter([request] * profile.stats_requests),
        )  # fmt: skip
        _record(run, "stats", "full", result, seed=seeded, reader=reader.kind)


# --- summary ------------------------------------------------------------------------------------------------


def _phases(run: dict[str, Any], scenario: str, target: str = "full") -> list[dict[str, Any]]:
    return [
        p for p in run["phases"] if p["scenario"] == scenario and p["target"] == target and "skipped" not in p
    ]


def evaluate(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue for one backend's run: the figure, the target, met or not."""
    backend = run["backend"]
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, target: float, *, at_least: bool) -> None:
        met = None if value is None else (value >= target if at_least else value < target)
        shown = None if value is None else round(value, 3)  # seconds as 0.309, not 0.30874900000000005
        checks.append(
            {"target": name, "value": shown, "goal": f"{'>=' if at_least else '<'} {target}", "met": met}
        )

    full = _phases(run, "single", "full")
    bare = _phases(run, "single", "bare")
    best_full = max((p["throughput_rps"] for p in full), default=0.0)
    best_bare = max((p["throughput_rps"] for p in bare), default=0.0)
    ratio = round(best_full / best_bare, 2) if best_bare else None
    run["ratio"] = ratio
    check("single full/bare", ratio, TARGETS["single_ratio"], at_least=True)
    rss = max((p["server"]["rss_mb_max_per_process"] for p in run["phases"] if "server" in p), default=None)
    check("RSS per API process (MB)", rss, TARGETS["rss_mb"], at_least=False)
    if backend == "postgresql":
        batch = max((p["items_per_s"] for p in _phases(run, "batch100")), default=None)
        check("batch documents/s", batch, TARGETS["batch_docs_per_s"], at_least=True)
        half = _phases(run, "single_half_rate")
        check("p99 at half rate (ms)", half[0]["latency_ms"]["p99"] if half else None,
              TARGETS["half_rate_p99_ms"], at_least=False)  # fmt: skip
        feed = _phases(run, "feed")
        check("feed delivery p99 (ms)", feed[0]["delivery_latency_ms"]["p99"] if feed else None,
              TARGETS["feed_p99_ms"], at_least=False)  # fmt: skip
        for phase in _phases(run, "stats") or [{"reader": "authority"}]:
            slowest = phase["latency_ms"]["max"] / 1000 if "latency_ms" in phase else None
            check(f"stats on 1 M referrals, {phase.get('reader', 'authority')}'s view (s)", slowest,
                  TARGETS["stats_s"], at_least=False)  # fmt: skip
    else:
        slowest = max((p["latency_ms"]["max"] for p in run["phases"] if "latency_ms" in p
                       and p["target"] == "full" and p["scenario"] != "stats"), default=None)  # fmt: skip
        check("slowest request (ms)", slowest, TARGETS["sqlite_max_ms"], at_least=False)
    return checks


def table(runs: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (printed, and pasted into the README)."""
    lines = [
        "| db | scenario | target | conc. / rate | req/s | docs/s | p50 ms | p90 ms | p99 ms | errors "
        "| server CPU % | CPU ms/req | RSS MB | full/bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        bare_by_c = {p["connections"]: p["throughput_rps"] for p in _phases(run, "single", "bare")}
        for phase in run["phases"]:
            if "skipped" in phase:
                lines.append(f"| {run['backend']} | {phase['scenario']} | {phase['target']} | "
                             f"{phase['skipped']} |  |  |  |  |  |  |  |  |  |  |")  # fmt: skip
                continue
            latency = phase["delivery_latency_ms"] if phase["scenario"] == "feed" else phase["latency_ms"]
            load = (
                f"{phase['rate']:.0f}/s" if phase["mode"] in {"open", "feed"} else f"c={phase['connections']}"
            )
            ratio = ""
            if (
                phase["scenario"] == "single"
                and phase["target"] == "full"
                and bare_by_c.get(phase["connections"])
            ):
                ratio = f"{phase['throughput_rps'] / bare_by_c[phase['connections']]:.2f}"
            server = phase["server"]
            scenario = f"{phase['scenario']} ({phase['reader']})" if "reader" in phase else phase["scenario"]
            lines.append(
                f"| {run['backend']} | {scenario} | {phase['target']} | {load} | "
                f"{phase['throughput_rps']:.0f} | {phase['items_per_s']:.0f} | {latency['p50']:.1f} | "
                f"{latency['p90']:.1f} | {latency['p99']:.1f} | {phase['errors']} | "
                f"{server['cpu_percent']:.0f} | {server['cpu_ms_per_request']:.2f} | "
                f"{server['rss_mb_max_per_process']:.0f} | {ratio} |"
            )
    lines.append("")
    lines.append("| db | target | figure | goal | met |")
    lines.append("|---|---|---|---|---|")
    for run in runs:
        for check in run["targets"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[check["met"]]
            lines.append(
                f"| {run['backend']} | {check['target']} | {check['value']} | {check['goal']} | {met} |"
            )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the run ran on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(value, 2) for value in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_backend(
    backend: str,
    profile: Profile,
    workers: int,
    keep: bool,
    *,
    only: frozenset[str] = frozenset(),
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Every phase on one database."""
    workdir = Path(tempfile.mkdtemp(prefix=f"referral-bench-{backend}-"))
    run = Run(backend, workdir, profile, only=only, profile_to=profile_to)
    started = time.monotonic()
    workers = 1 if backend == "sqlite" else workers
    try:
        with database(backend, workdir) as url:
            if backend == "postgresql":
                run.notes.append(f"PostgreSQL {fetch(url, 'SHOW server_version')[0][0]}")
            authorities, providers, observer = asyncio.run(_register(url, profile))
            bare_phases(run, url, authorities, providers, workers)
            full_phases(run, url, authorities, providers, observer, workers=workers)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {
        "backend": backend,
        "workers": workers,
        "seconds": round(time.monotonic() - started, 1),
        "phases": run.phases,
        "notes": run.notes,
    }
    result["targets"] = evaluate(result)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds per database; the harness's own test"
    )
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--workers", type=int, default=1, help="API processes on PostgreSQL (and bare ones)")
    parser.add_argument("--duration", type=float, help="seconds measured per phase (after a warm-up)")
    parser.add_argument(
        "--parties", help="authorities,providers registered (default 4,4; documents go to every pair in turn)"
    )
    parser.add_argument("--out", type=Path, help=f"folder for the JSON results (default {RESULTS})")
    parser.add_argument("--require-postgres", action="store_true", help="fail instead of skipping PostgreSQL")
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the service with py-spy (make bench installs it) into this folder (collapsed stacks)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs, specs, results)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset: bare, single, batch, status, feed, audit_proof, stats (default: all)",
    )
    args = parser.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    if args.duration:
        profile = Profile(**{**profile.__dict__, "duration": args.duration})
    if args.parties:
        authorities, providers = (int(count) for count in args.parties.split(","))
        profile = Profile(**{**profile.__dict__, "authorities": authorities, "providers": providers})
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average_at_start']}", flush=True)
    for backend in backends:
        if backend == "postgresql" and (reason := postgres_unavailable()):
            if args.require_postgres:
                print(reason, file=sys.stderr)
                return 1
            print(f"  postgresql skipped: {reason}", flush=True)
            skipped[backend] = reason
            continue
        only = frozenset(name.strip() for name in args.only.split(",") if name.strip())
        runs.append(
            run_backend(backend, profile, args.workers, args.keep, only=only, profile_to=args.profile)
        )
    document = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full",
        "machine": info,
        "profile": profile.__dict__,
        "targets": TARGETS,
        "runs": runs,
        "skipped": skipped,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{'smoke' if args.smoke else 'full'}.json"
    (out / name).write_text(json.dumps(document, indent=2))
    (out / f"latest-{'smoke' if args.smoke else 'full'}.json").write_text(json.dumps(document, indent=2))
    print()
    print(table(runs))
    print(f"\nresults: {out / name}")
    return 0
