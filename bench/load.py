"""The load generator, run as its own process: ``python -m bench.load SPEC.json RESULT.json``.

It plays pre-built raw HTTP/1.1 requests (written by the harness with :func:`write_requests`) over N
keep-alive connections, with a minimal client protocol (a request is one ``write``, a response is read by its
``Content-Length``) so that the generator costs a small fraction of what the server spends per request, as
wrk would. Modes:

- ``closed``: N connections, each sends its next request as soon as the previous answer arrived.
- ``open``: requests are scheduled at a fixed rate and handed to the first free of N connections; latency
  counts from the *scheduled* time, so a server that falls behind is charged for the queue (no coordinated
  omission).
- ``feed``: ``open`` submissions to one provider while a long-poll reader waits on that provider's feed; the
  latency of each ``referral.submitted`` event is its arrival at the reader minus its ``created_at`` (taken by
  the server when it received the submission, before its commit, so the figure errs on the long side).

Latencies are kept in nanoseconds, every one of them, so p99 is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
    uvloop = None

_LENGTH = struct.Struct(">I")
GRACE_SECONDS = 10.0


def http_request(
    method: str, path: str, *, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One raw HTTP/1.1 request, keep-alive."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def write_requests(path: Path, requests: Iterable[bytes]) -> int:
    """Write raw requests, each prefixed by its length; returns how many."""
    count = 0
    with path.open("wb") as out:
        for raw in requests:
            out.write(_LENGTH.pack(len(raw)))
            out.write(raw)
            count += 1
    return count


def read_requests(path: Path) -> list[bytes]:
    """The raw requests of a file written by :func:`write_requests`."""
    data = path.read_bytes()
    requests, offset = [], 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        requests.append(data[offset : offset + length])
        offset += length
    return requests


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head_end = -1
        self._expected = -1
        self._status = 0
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def _parse(self) -> None:
        if self._waiter is None or self._waiter.done():
            return
        if self._expected < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            self._status = int(lines[0].split(" ", 2)[1])
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:  # the service and the bare app always send Content-Length
                self._waiter.set_exception(ConnectionError("response without Content-Length"))
                return
            self._head_end = end + 4
            self._expected = end + 4 + length
        if len(self._buffer) >= self._expected:
            body = bytes(self._buffer[self._head_end : self._expected])
            del self._buffer[: self._expected]
            self._expected = -1
            self._waiter.set_result((self._status, body))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its response: ``(status, body)``."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        self._parse()
        try:
            return await self._waiter
        finally:
            self._waiter = None


async def _connect(host: str, port: int) -> _Connection:
    _transport, protocol = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return protocol


@dataclass
class Recorder:
    """Latencies and outcomes of the measured window."""

    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    ok: int = 0
    errors: int = 0
    items_ok: int = 0
    recording: bool = True

    def record(self, latency_ns: int, status: str, *, ok: bool, items: int = 1) -> None:
        if not self.recording:
            return
        self.latencies_ns.append(latency_ns)
        self.statuses[status] += 1
        if ok:
            self.ok += 1
            self.items_ok += items
        else:
            self.errors += 1


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds (nearest rank)."""
    if not latencies_ns:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(latencies_ns)

    def rank(fraction: float) -> float:
        index = min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))
        return round(ordered[index] / 1e6, 3)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1] / 1e6, 3),
        "mean": round(sum(ordered) / len(ordered) / 1e6, 3),
    }


def _is_ok(status: int) -> bool:
    return 200 <= status < 300


async def _closed(spec: dict[str, Any], requests: Iterator[bytes], recorder: Recorder) -> float:
    host, port = spec["host"], int(spec["port"])
    loop = asyncio.get_running_loop()
    items = int(spec.get("items_per_request", 1))
    deadline = loop.time() + spec["warmup"] + spec["duration"]
    exhausted = False

    async def worker() -> None:
        nonlocal exhausted
        connection = await _connect(host, port)
        while loop.time() < deadline:
            raw = next(requests, None)
            if raw is None:
                exhausted = True
                return
            started = time.perf_counter_ns()
            try:
                status, _body = await connection.send(raw)
            except ConnectionError:
                recorder.record(time.perf_counter_ns() - started, "connection_error", ok=False)
                connection = await _connect(host, port)
                continue
            recorder.record(time.perf_counter_ns() - started, str(status), ok=_is_ok(status), items=items)
        if connection.transport is not None:
            connection.transport.close()

    workers = [asyncio.create_task(worker()) for _ in range(int(spec["connections"]))]
    recorder.recording = spec["warmup"] <= 0
    if spec["warmup"] > 0:
        await asyncio.sleep(spec["warmup"])
        recorder.recording = True
    measured_from = loop.time()
    await asyncio.gather(*workers)
    spec["exhausted"] = exhausted
    return loop.time() - measured_from


async def _open(
    spec: dict[str, Any], requests: Iterator[bytes], recorder: Recorder, *, stop: asyncio.Event | None = None
) -> float:
    host, port = spec["host"], int(spec["port"])
    loop = asyncio.get_running_loop()
    rate = float(spec["rate"])
    items = int(spec.get("items_per_request", 1))
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    connections = int(spec["connections"])

    async def worker() -> None:
        connection = await _connect(host, port)
        while (job := await queue.get()) is not None:
            scheduled, raw = job
            try:
                status, _body = await connection.send(raw)
            except ConnectionError:
                recorder.record(int((loop.time() - scheduled) * 1e9), "connection_error", ok=False)
                connection = await _connect(host, port)
                continue
            latency = int((loop.time() - scheduled) * 1e9)
            recorder.record(latency, str(status), ok=_is_ok(status), items=items)
        if connection.transport is not None:
            connection.transport.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = loop.time() + 0.05
    warmup_end = start + spec["warmup"]
    end = warmup_end + spec["duration"]
    recorder.recording = spec["warmup"] <= 0
    sent = 0
    exhausted = False
    while True:
        scheduled = start + sent / rate
        if scheduled >= end or (stop is not None and stop.is_set()):
            break
        if not recorder.recording and scheduled >= warmup_end:
            recorder.recording = True
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        raw = next(requests, None)
        if raw is None:
            exhausted = True
            break
        queue.put_nowait((scheduled, raw))
        sent += 1
    measured = max(0.0, min(loop.time(), end) - warmup_end)
    await _drain(queue, workers, recorder)
    spec["exhausted"] = exhausted
    return measured


async def _drain(
    queue: asyncio.Queue[tuple[float, bytes] | None], workers: list[asyncio.Task[None]], recorder: Recorder
) -> None:
    """Let the requests in flight finish (within the grace period); the rest count as unanswered."""
    for _ in workers:
        queue.put_nowait(None)
    _done, pending = await asyncio.wait(workers, timeout=GRACE_SECONDS)
    for task in pending:
        task.cancel()
    unanswered = queue.qsize()
    if pending or unanswered:
        recorder.errors += len(pending) + unanswered
        recorder.statuses["unanswered"] += len(pending) + unanswered


async def _feed(spec: dict[str, Any], requests: Iterator[bytes], recorder: Recorder) -> dict[str, Any]:
    """Open-loop submissions while one long-poll reader measures how long each takes to arrive."""
    host, port = spec["host"], int(spec["port"])
    reader_token = spec["reader_token"]
    arrivals = Recorder()
    expected_type = "referral.submitted"
    after = str(spec.get("after", "0"))

    connection = await _connect(host, port)
    expected: int | None = None
    all_arrived = asyncio.Event()

    async def read() -> None:
        nonlocal after
        while True:
            raw = http_request(
                "GET",
                f"/v1/feed?after={after}&wait=5&limit=500",
                host=f"{host}:{port}",
                headers={"Authorization": f"Bearer {reader_token}"},
            )
            status, body = await connection.send(raw)
            arrived = time.time()
            if status != 200:
                arrivals.record(0, f"feed_{status}", ok=False)
                await asyncio.sleep(0.1)
                continue
            page = json.loads(body)
            for event in page["events"]:
                if event["type"] == expected_type:
                    created = datetime.fromisoformat(event["created_at"]).timestamp()
                    arrivals.record(int((arrived - created) * 1e9), "delivered", ok=True)
            after = page["next_cursor"]
            if expected is not None and arrivals.ok >= expected:
                all_arrived.set()

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)  # the reader is waiting before the first submission
    spec["warmup"] = 0  # every accepted submission is counted, and must arrive
    measured = await _open(spec, requests, recorder)
    expected = recorder.ok
    if arrivals.ok < expected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_arrived.wait(), GRACE_SECONDS)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await reader
    if connection.transport is not None:
        connection.transport.close()
    return {
        "duration_s": measured,
        "events_delivered": arrivals.ok,
        "events_missing": max(0, recorder.ok - arrivals.ok),
        "delivery_latency_ms": percentiles(arrivals.latencies_ns),
        "feed_errors": arrivals.errors,
    }


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load phase as ``spec`` says; returns its measurements."""
    all_requests = read_requests(Path(spec["requests_file"]))
    requests: Iterator[bytes]
    if spec.get("cycle"):
        requests = (all_requests[i % len(all_requests)] for i in range(10**12))
    else:
        requests = iter(all_requests)
    recorder = Recorder()
    extra: dict[str, Any] = {}
    if spec["mode"] == "closed":
        measured = await _closed(spec, requests, recorder)
    elif spec["mode"] == "open":
        measured = await _open(spec, requests, recorder)
    elif spec["mode"] == "feed":
        extra = await _feed(spec, requests, recorder)
        measured = extra.pop("duration_s")
    else:
        raise ValueError(f"unknown mode {spec['mode']!r}")
    measured = max(measured, 1e-9)
    items = int(spec.get("items_per_request", 1))
    return {
        "mode": spec["mode"],
        "connections": int(spec["connections"]),
        "rate": spec.get("rate"),
        "duration_s": round(measured, 3),
        "requests": len(recorder.latencies_ns),
        "ok": recorder.ok,
        "errors": recorder.errors,
        "statuses": dict(recorder.statuses),
        "throughput_rps": round(recorder.ok / measured, 1),
        "items_per_request": items,
        "items_per_s": round(recorder.items_ok / measured, 1),
        "latency_ms": percentiles(recorder.latencies_ns),
        "exhausted": bool(spec.get("exhausted")),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.load SPEC.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.load SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    result = uvloop.run(run(spec)) if uvloop is not None else asyncio.run(run(spec))
    Path(args[1]).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
