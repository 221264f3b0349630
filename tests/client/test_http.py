"""Tokens, retries and errors of the SDK against a scripted service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from referral.client import (
    AuthenticationError,
    RateLimitedError,
    ReferralClient,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    ValidationFailedError,
)
from tests.client.conftest import FAST_RETRY
from tests.client.fake import FakeService, hang_up, problem

ServerFactory = Callable[..., Coroutine[Any, Any, TestServer]]


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> FakeService:
    service = FakeService()
    server = await aiohttp_server(service.app())
    service.url = str(server.make_url("")).rstrip("/")
    return service


class Sleeps(list[float]):
    """Records each back-off instead of waiting it out."""

    async def __call__(self, delay: float) -> None:
        self.append(delay)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(fake: FakeService, sleeps: Sleeps) -> AsyncIterator[ReferralClient]:
    async with ReferralClient(fake.url, fake.credentials, retry=FAST_RETRY, sleep=sleeps) as sdk:
        yield sdk


async def test_one_token_serves_many_requests_until_it_nears_expiry(
    fake: FakeService, client: ReferralClient
) -> None:
    fake.expires_in = 0  # inside the refresh margin from the start: the next request needs a fresh token
    first = (await client.request("GET", "/v1/things")).json()
    fake.expires_in = 900
    second = (await client.request("GET", "/v1/things")).json()
    third = (await client.request("GET", "/v1/things")).json()
    assert [answer["authorization"] for answer in (first, second, third)] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
    ]
    assert fake.tokens_issued == 2


async def test_a_401_gets_one_fresh_token_and_one_retry(fake: FakeService, client: ReferralClient) -> None:
    fake.script["/v1/things"] = [problem(401, "Invalid access token")]
    answer = (await client.request("GET", "/v1/things")).json()
    assert answer["authorization"] == "Bearer token-2"

    fake.script["/v1/things"] = [problem(401, "Invalid access token"), problem(401, "Invalid access token")]
    with pytest.raises(AuthenticationError):
        await client.request("GET", "/v1/things")
    assert fake.tokens_issued == 3


async def test_429_and_503_are_retried_with_back_off_honouring_retry_after(
    fake: FakeService, client: ReferralClient, sleeps: Sleeps
) -> None:
    fake.script["/v1/things"] = [
        problem(429, "Too many requests", headers={"Retry-After": "0"}),
        problem(503, "Service unavailable"),
    ]
    assert (await client.request("POST", "/v1/things", json_body={})).json()["ok"]
    assert sleeps[0] == 0.0
    assert FAST_RETRY.base_delay / 2 <= sleeps[1] <= FAST_RETRY.max_delay
    assert len(fake.calls) == 3


async def test_a_retry_after_beyond_the_policy_is_left_to_the_caller(
    fake: FakeService, client: ReferralClient, sleeps: Sleeps
) -> None:
    fake.script["/v1/things"] = [problem(429, "Too many requests", headers={"Retry-After": "120"})]
    with pytest.raises(RateLimitedError) as limited:
        await client.request("GET", "/v1/things")
    assert limited.value.retry_after == 120
    assert sleeps == []


async def test_persistent_unavailability_raises_the_problem_with_its_members(
    fake: FakeService, client: ReferralClient, sleeps: Sleeps
) -> None:
    fake.script["/v1/things"] = [
        problem(503, "Service unavailable", detail="database unreachable", request_id=f"r{n}")
        for n in range(4)
    ]
    with pytest.raises(ServiceUnavailableError) as unavailable:
        await client.request("GET", "/v1/things")
    error = unavailable.value
    assert (error.status, error.title, error.detail, error.request_id) == (
        503,
        "Service unavailable",
        "database unreachable",
        "r3",
    )
    assert error.type == "https://referral.dev/problems/service-unavailable"
    assert isinstance(error, ServerError)
    assert len(sleeps) == FAST_RETRY.attempts - 1


async def test_validation_errors_list_each_field(fake: FakeService, client: ReferralClient) -> None:
    errors = [{"loc": ["payload", "items"], "msg": "too short", "type": "too_short"}]
    fake.script["/v1/referrals"] = [problem(422, "Validation failed", detail="invalid", errors=errors)]
    with pytest.raises(ValidationFailedError) as invalid:
        await client.request("POST", "/v1/referrals", json_body={})
    assert invalid.value.errors == errors
    assert str(invalid.value) == "422 Validation failed: invalid"


async def test_a_non_json_error_body_is_quoted_briefly(fake: FakeService, client: ReferralClient) -> None:
    async def bad_gateway(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="<html>" + "x" * 5000, content_type="text/html")

    fake.script["/v1/things"] = [bad_gateway]
    with pytest.raises(ServerError) as failed:
        await client.request("GET", "/v1/things")
    assert failed.value.status == 502
    assert failed.value.detail is not None
    assert failed.value.detail.startswith("<html>")
    assert len(failed.value.detail) <= 300


async def test_broken_connections_are_retried_only_when_repeating_is_safe(
    fake: FakeService, client: ReferralClient
) -> None:
    fake.script["/v1/things"] = [hang_up]
    assert (await client.request("GET", "/v1/things")).json()["ok"]

    fake.script["/v1/things"] = [hang_up]
    with pytest.raises(TransportError):
        await client.request("POST", "/v1/things", json_body={})

    fake.calls.clear()
    fake.script["/v1/things"] = [hang_up]
    assert (await client.request("POST", "/v1/things", json_body={}, idempotency_key="k-1")).json()["ok"]
    assert [call.headers["Idempotency-Key"] for call in fake.calls] == ["k-1", "k-1"]


async def test_a_submission_keeps_its_idempotency_key_across_retries(
    fake: FakeService, client: ReferralClient
) -> None:
    fake.script["/v1/referrals"] = [
        problem(503, "Service unavailable", headers={"Retry-After": "0"}),
        problem(422, "Validation failed", detail="invalid"),
    ]
    with pytest.raises(ValidationFailedError):
        await client.submit({"type": "referral", "addressee": "p", "items": []})
    keys = [call.headers.get("Idempotency-Key") for call in fake.calls]
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    assert {call.headers["Content-Type"] for call in fake.calls} == {"application/jose"}


async def test_an_unreachable_service_is_a_transport_error(sleeps: Sleeps) -> None:
    async with ReferralClient("http://127.0.0.1:9", retry=FAST_RETRY, sleep=sleeps) as client:
        with pytest.raises(TransportError):
            await client.service_jwks()
    assert len(sleeps) == FAST_RETRY.attempts - 1
