"""A small Chrome DevTools Protocol client over aiohttp's websocket, driving Debian's headless Chromium.

No browser download and no driver binary: the test talks to ``/usr/bin/chromium`` directly. Every request
the page makes is recorded (``Network.requestWillBeSent``), and the browser's resolver maps every host but
127.0.0.1 to nowhere, so nothing can leave the machine even if the page tried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
STARTUP_SECONDS = 30
WAIT_SECONDS = 30


def chromium_or_skip() -> str:
    """The Chromium executable; skips the test without one (fails under REFERRAL_REQUIRE_BROWSER=1)."""
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    reason = "Debian's chromium is not installed (`make test` installs it: apt-get install chromium)"
    if os.environ.get("REFERRAL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"REFERRAL_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass
class Page:
    """One browser tab, attached over the flattened protocol."""

    browser: Browser
    session_id: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command to this tab and return its result."""
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaiting promises)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> None:
        """Poll until ``expression`` is true in the page (navigation may replace the page meanwhile)."""

        async def poll() -> None:
            while True:
                with contextlib.suppress(AssertionError, RuntimeError):
                    if await self.evaluate(expression):
                        return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(poll(), WAIT_SECONDS)

    async def navigate(self, url: str) -> None:
        """Open ``url`` and wait until the document has loaded."""
        await self.send("Page.navigate", url=url)
        await self.wait_for(
            f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'"
        )

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the whole page."""
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(result["data"]))


@dataclass
class Browser:
    """A headless Chromium process and its DevTools websocket."""

    websocket: aiohttp.ClientWebSocketResponse
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    pages: dict[str, Page] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    async def send(self, method: str, *, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        command_id = next(self.ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        await self.websocket.send_str(json.dumps(message))
        answer = await asyncio.wait_for(future, WAIT_SECONDS)
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def read(self) -> None:
        """Dispatch answers to their commands and record the events the tests look at."""
        async for message in self.websocket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            page = self.pages.get(data.get("sessionId", ""))
            if page is None:
                continue
            params = data.get("params", {})
            if data.get("method") == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif data.get("method") == "Runtime.exceptionThrown":
                page.errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif data.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
                page.errors.append(params["entry"].get("text", "")[:500])

    async def new_page(self) -> Page:
        """A new tab with network, page, runtime and log events on."""
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        self.pages[page.session_id] = page
        for domain in ("Network", "Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride", width=1280, height=1400, deviceScaleFactor=1, mobile=False
        )
        return page


async def _devtools_port(profile: Path, process: asyncio.subprocess.Process) -> tuple[int, str]:
    marker = profile / "DevToolsActivePort"

    async def appear() -> tuple[int, str]:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"chromium exited with {process.returncode}")
            if marker.exists():
                lines = marker.read_text().split()
                if len(lines) >= 2:
                    return int(lines[0]), lines[1]
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(appear(), STARTUP_SECONDS)


@contextlib.asynccontextmanager
async def launch(executable: str, profile: Path) -> AsyncIterator[Browser]:
    """Start headless Chromium with its own profile, connect to it, and stop it afterwards."""
    process = await asyncio.create_subprocess_exec(
        executable,
        "--headless=new",
        "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--metrics-recording-only",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port, path = await _devtools_port(profile, process)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as websocket,
        ):
            browser = Browser(websocket)
            reader = asyncio.create_task(browser.read())
            try:
                yield browser
            finally:
                with contextlib.suppress(RuntimeError, TimeoutError, ConnectionError):
                    await browser.send("Browser.close")
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
