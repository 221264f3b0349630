"""Every error is RFC 9457 problem+json with the request id; request ids are echoed or generated."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from referral.app import create_app
from referral.config import Settings

PROBLEM = "application/problem+json"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


async def _explode(_request: web.Request) -> web.Response:
    raise RuntimeError("secret-internal-detail in /srv/app.py line 12")


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=str(len(body)))


@pytest.fixture
def app(settings: Settings) -> web.Application:
    application = create_app(settings.model_copy(update={"body_limit": 4096}))
    application.router.add_get("/test/explode", _explode)
    application.router.add_post("/test/echo", _echo)
    return application


def _assert_problem(body: dict[str, Any], status: int, response_id: str) -> None:
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response_id


async def test_unknown_path_is_a_404_problem(client: TestClient[Any, Any]) -> None:
    response = await client.get("/no/such/thing")
    assert response.status == 404
    assert response.content_type == PROBLEM
    _assert_problem(await response.json(), 404, response.headers["X-Request-ID"])
    assert (await response.json())["instance"] == "/no/such/thing"


async def test_wrong_method_is_a_405_problem_with_allow(client: TestClient[Any, Any]) -> None:
    response = await client.delete("/healthz")
    assert response.status == 405
    assert response.content_type == PROBLEM
    assert "GET" in response.headers["Allow"]
    _assert_problem(await response.json(), 405, response.headers["X-Request-ID"])


async def test_oversized_body_is_a_413_problem(client: TestClient[Any, Any]) -> None:
    response = await client.post("/test/echo", data=b"x" * 5000)
    assert response.status == 413
    assert response.content_type == PROBLEM
    body = await response.json()
    _assert_problem(body, 413, response.headers["X-Request-ID"])
    assert body["limit"] == 4096


async def test_body_within_limit_is_served(client: TestClient[Any, Any]) -> None:
    response = await client.post("/test/echo", data=b"x" * 4000)
    assert response.status == 200
    assert await response.text() == "4000"


async def test_oversized_chunked_body_is_a_413_problem(client: TestClient[Any, Any]) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 1000

    response = await client.post("/test/echo", data=chunks())
    assert response.status == 413
    assert response.content_type == PROBLEM


async def test_unexpected_exception_is_a_500_problem_without_details(client: TestClient[Any, Any]) -> None:
    response = await client.get("/test/explode")
    assert response.status == 500
    assert response.content_type == PROBLEM
    text = await response.text()
    assert "secret-internal-detail" not in text
    assert "Traceback" not in text
    _assert_problem(await response.json(), 500, response.headers["X-Request-ID"])


async def test_sane_request_id_is_echoed(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "case-4711.attempt:2"})
    assert response.headers["X-Request-ID"] == "case-4711.attempt:2"
    problem = await client.get("/missing", headers={"X-Request-ID": "case-4711"})
    assert (await problem.json())["request_id"] == "case-4711"


@pytest.mark.parametrize("supplied", ["", "a b", "x" * 200, "<script>", "-leading-dash"])
async def test_unsafe_request_id_is_replaced(client: TestClient[Any, Any], supplied: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": supplied})
    assert UUID.fullmatch(response.headers["X-Request-ID"])


async def test_generated_request_ids_differ(client: TestClient[Any, Any]) -> None:
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
