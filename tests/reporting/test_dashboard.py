"""``/dashboard`` over HTTP: sign-in with an access token, cookies, CSRF, public mode, CSV, static files."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from referral.app import create_app
from referral.config import Settings
from tests.auth.factories import access_token, make_party
from tests.reporting.scenario import Parties, figures
from tests.reporting.seed import Case

NOW = datetime.now(UTC)


def recent_months(now: datetime, count: int = 3) -> list[date]:
    """The ``count`` months before this one."""
    months = []
    for back in range(count, 0, -1):
        index = now.year * 12 + now.month - 1 - back
        months.append(date(index // 12, index % 12 + 1, 1))
    return months


@pytest.fixture
def months() -> list[date]:
    return recent_months(NOW)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the form carries a CSRF token"
    return match.group(1)


def chart_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', page, re.S)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


async def sign_in(client: TestClient[Any, Any], token: str) -> Any:
    login = await client.get("/dashboard/login")
    return await client.post(
        "/dashboard/login",
        data={"access_token": token, "csrf_token": csrf_of(await login.text())},
        allow_redirects=False,
    )


async def test_signed_out_visitors_are_sent_to_the_sign_in_form(client: TestClient[Any, Any]) -> None:
    response = await client.get("/dashboard", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/login"
    login = await client.get("/dashboard/login")
    assert login.status == 200
    csp = login.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert login.headers["X-Content-Type-Options"] == "nosniff"
    cookie = login.cookies["referral_csrf"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/dashboard"


async def test_an_observer_signs_in_with_its_token_and_sees_suppressed_aggregates(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    observer = await make_party(client, kind="observer")
    response = await sign_in(client, await access_token(client, observer))
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard"
    session = response.cookies["referral_dashboard"]
    assert session["httponly"]
    assert session["samesite"] == "Strict"
    assert session["path"] == "/dashboard"
    assert not session["secure"]  # plain HTTP in the test; Secure whenever the service runs on HTTPS

    page_response = await client.get("/dashboard")
    page = await page_response.text()
    assert page_response.status == 200
    assert "<script>" not in page  # no inline script: the JSON block is data, the code is a static file
    data = chart_data(page)
    expected = figures(cases, NOW)
    assert sum(value or 0 for value in data["timeline"]["received"]) <= expected["received"]
    assert "suppressed" in page
    # Figures only: no referral content, URL, case reference or statement of reasons.
    assert "content.example" not in page
    assert "Vereinigung" not in page
    assert "ST 14-2025" not in page

    download = await client.get("/dashboard/stats.csv", params={"breakdown": "provider"})
    assert download.status == 200
    records = list(csv.DictReader(io.StringIO(await download.text())))
    total = records[-1]
    assert total["scope"] == "total"
    assert int(total["received"]) == expected["received"]


async def test_forms_without_the_csrf_token_and_bad_tokens_are_refused(
    client: TestClient[Any, Any], parties: Parties
) -> None:
    observer = await make_party(client, kind="observer")
    token = await access_token(client, observer)
    await client.get("/dashboard/login")
    response = await client.post(
        "/dashboard/login", data={"access_token": token, "csrf_token": "forged"}, allow_redirects=False
    )
    assert response.status == 403
    assert "referral_dashboard" not in response.cookies
    response = await sign_in(client, "not-a-token")
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/login?error=invalid_token"
    assert "referral_dashboard" not in response.cookies
    assert "not valid" in await (await client.get(response.headers["Location"])).text()
    response = await sign_in(client, await access_token(client, observer, scope="stats:read"))
    assert response.status == 303
    page = await (await client.get("/dashboard")).text()
    logout = await client.post("/dashboard/logout", data={"csrf_token": csrf_of(page)}, allow_redirects=False)
    assert logout.status == 303
    assert (await client.get("/dashboard", allow_redirects=False)).status == 303


async def test_an_authority_sees_its_own_figures_in_full_and_filters_change_them(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    authority = parties.authority_a
    await sign_in(client, await access_token(client, authority))
    mine = [case for case in cases if case.issuer is authority]
    data = chart_data(await (await client.get("/dashboard")).text())
    assert sum(data["timeline"]["received"]) == figures(mine, NOW)["received"]
    assert sum(data["action_time"]["counts"]) == figures(mine, NOW)["decided"]
    orders = [case for case in mine if case.kind == "removal_order"]
    filtered = chart_data(await (await client.get("/dashboard", params={"type": "removal_order"})).text())
    assert sum(filtered["timeline"]["received"]) == len(orders)
    assert sum(filtered["deadline"]["within"]) == figures(orders, NOW)["removal_orders_within_deadline"]
    to_p = [case for case in mine if case.addressee is parties.provider_p]
    by_provider = chart_data(
        await (await client.get("/dashboard", params={"provider": parties.provider_p.party_id})).text()
    )
    assert sum(by_provider["timeline"]["received"]) == len(to_p)
    bad = await client.get("/dashboard", params={"interval": "fortnight"})
    assert bad.status == 422


@pytest.fixture
def public_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_dashboard": True})


async def test_the_public_dashboard_needs_no_sign_in(aiohttp_client: Any, public_settings: Settings) -> None:
    client = await aiohttp_client(create_app(public_settings))
    response = await client.get("/dashboard")
    assert response.status == 200
    assert "Public view" in await response.text()


async def test_static_files_are_shipped_with_the_package(client: TestClient[Any, Any]) -> None:
    chart = await client.get("/dashboard/static/vendor/chart.js/chart.umd.min.js")
    assert chart.status == 200
    assert chart.content_type == "text/javascript"
    assert chart.headers["X-Content-Type-Options"] == "nosniff"
    assert b"Chart.js v4" in await chart.read()
    license_file = await client.get("/dashboard/static/vendor/chart.js/LICENSE.md")
    assert "MIT License" in await license_file.text()
    assert (await client.get("/dashboard/static/../../config.py")).status == 404
    assert (await client.get("/dashboard/static/nothing.js")).status == 404
