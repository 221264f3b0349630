"""Per-client rate limits: token buckets per caller and route family, 429 with Retry-After."""

from __future__ import annotations

from typing import Any

import pytest

from referral.app import create_app
from referral.config import Settings
from referral.core.ratelimit import RateLimiter, route_family
from tests.auth.factories import bearer, make_party


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/referrals", "/v1/referrals"),
        ("/v1/referrals:batch", "/v1/referrals"),
        ("/v1/referrals/abc/statuses", "/v1/referrals"),
        ("/v1/feed", "/v1/feed"),
        ("/v1/webhooks/x/deliveries/y/retry", "/v1/webhooks"),
        ("/oauth/token", "/oauth"),
        ("/.well-known/jwks.json", "/.well-known"),
        ("/", "/"),
    ],
)
def test_route_families(path: str, family: str) -> None:
    assert route_family(path) == family


def test_a_bucket_refills_at_its_rate() -> None:
    limiter = RateLimiter(per_second=2, burst=3)
    assert [limiter.retry_after("a", "/v1/feed", now=0.0) for _ in range(3)] == [None, None, None]
    assert limiter.retry_after("a", "/v1/feed", now=0.0) == 1
    assert limiter.retry_after("b", "/v1/feed", now=0.0) is None, "callers have their own buckets"
    assert limiter.retry_after("a", "/v1/referrals", now=0.0) is None, "and so do route families"
    assert limiter.retry_after("a", "/v1/feed", now=0.5) is None, "half a second brings one token back"
    assert limiter.retry_after("a", "/v1/feed", now=0.5) == 1
    assert limiter.retry_after("a", "/v1/feed", now=100.0) is None
    # The burst caps what an idle caller saves up.
    assert [limiter.retry_after("a", "/v1/feed", now=100.0) for _ in range(3)] == [None, None, 1]


async def test_a_client_over_its_rate_gets_429_with_retry_after(
    settings: Settings, aiohttp_client: Any
) -> None:
    app = create_app(
        settings.model_copy(
            update={"run_background_tasks": False, "rate_limit_per_second": 0.5, "rate_limit_burst": 2}
        )
    )
    client = await aiohttp_client(app)
    provider = await make_party(client, kind="provider")  # make_party uses the service layer, not the API
    headers = await bearer(client, provider)
    statuses = [(await client.get("/v1/referrals", headers=headers)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = await client.get("/v1/referrals", headers=headers)
    assert response.status == 429
    assert response.headers["Retry-After"] in {"1", "2"}
    problem = await response.json()
    assert problem["type"].endswith("/too-many-requests")
    assert (await client.get("/v1/feed", headers=headers)).status == 200, (
        "another route family has its own budget"
    )
    other = await make_party(client, kind="provider")
    assert (await client.get("/v1/referrals", headers=await bearer(client, other))).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_zero_turns_the_limit_off(settings: Settings, aiohttp_client: Any) -> None:
    app = create_app(settings.model_copy(update={"run_background_tasks": False, "rate_limit_per_second": 0}))
    client = await aiohttp_client(app)
    provider = await make_party(client, kind="provider")
    headers = await bearer(client, provider)
    for _ in range(20):
        assert (await client.get("/v1/referrals", headers=headers)).status == 200
