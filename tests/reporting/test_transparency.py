"""``GET /v1/reports/transparency``: TCO Art. 7 (provider) and Art. 8 (authority) figures, JSON and HTML."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient

from tests.auth.factories import bearer, make_party
from tests.reporting.scenario import Parties, final_status
from tests.reporting.seed import Case

NOW = datetime.now(UTC)
YEAR = NOW.year - 1


async def test_a_providers_article_7_report(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    provider = parties.provider_p
    response = await client.get(
        "/v1/reports/transparency", params={"year": str(YEAR)}, headers=await bearer(client, provider)
    )
    report = await response.json()
    assert response.status == 200, report
    assert report["article"] == "7"
    assert report["party"]["name"] == "Provider P"
    orders = [case for case in cases if case.addressee is provider and case.kind == "removal_order"]
    removal_orders = report["removal_orders"]
    assert removal_orders["received"] == len(orders) == 15
    decisions = [case.steps[-1] for case in orders]
    assert removal_orders["actioned"] == sum(step.status == "action_taken" for step in decisions) == 12
    assert removal_orders["actioned_within_deadline"] == 9
    assert removal_orders["not_actioned"] == 3
    # Every action_taken removed each of the order's three items; each no_action found its one item gone.
    assert removal_orders["items"]["removed"] == 12 * 3
    assert removal_orders["items"]["not_found"] == 3
    assert removal_orders["reasons_for_not_acting"] == [
        {"reason": "content_not_found", "grounds": None, "count": 3}
    ]
    referrals = report["referrals"]
    assert referrals["received"] == 6
    assert referrals["actioned"] == 6  # three action_taken, three partially_actioned
    assert referrals["items"]["removed"] == 3 * 2 + 3 * 1
    assert referrals["items"]["no_action"] == 3
    assert referrals["reasons_for_not_acting"] == [
        {"reason": "not_against_terms", "grounds": None, "count": 3}
    ]
    assert [row["article"] for row in report["not_recorded"]] == [
        "7(3)(a)",
        "7(3)(b)",
        "7(3)(c)",
        "7(3)(e)",
        "7(3)(f)",
    ]

    # Complaints, as provider R saw them: two contested, one upheld, one reinstated.
    response = await client.get("/v1/reports/transparency", headers=await bearer(client, parties.provider_r))
    complaints = (await response.json())["complaints"]
    assert complaints == {"received": 2, "upheld": 1, "reinstated": 1, "pending": 0}


async def test_an_authoritys_article_8_report_with_implementation_by_provider(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    authority = parties.authority_a
    response = await client.get(
        "/v1/reports/transparency", params={"year": str(YEAR)}, headers=await bearer(client, authority)
    )
    report = await response.json()
    assert response.status == 200, report
    assert report["article"] == "8"
    issued = [case for case in cases if case.issuer is authority and case.kind == "removal_order"]
    assert report["removal_orders"]["received"] == len(issued)
    by_provider = {row["name"]: row for row in report["removal_orders"]["by_provider"]}
    assert set(by_provider) == {"Provider P", "Provider Q"}
    assert by_provider["Provider P"]["issued"] == 15
    assert by_provider["Provider P"]["actioned_within_deadline"] == 9
    to_q = [case for case in issued if case.addressee is parties.provider_q]
    assert by_provider["Provider Q"]["issued"] == len(to_q)
    assert by_provider["Provider Q"]["pending"] == sum(
        final_status(case, NOW) == "submitted" for case in to_q
    )
    assert report["complete"] is True


async def test_the_report_prints_as_html(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    response = await client.get(
        "/v1/reports/transparency",
        params={"year": str(YEAR), "format": "html"},
        headers=await bearer(client, parties.provider_p),
    )
    page = await response.text()
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert f"Transparency report {YEAR}" in page
    assert "Provider P" in page
    assert "<script" not in page
    # No referral content: neither the items' URLs nor their descriptions nor the statement of reasons.
    assert "content.example" not in page
    assert "Vereinigung" not in page


async def test_other_parties_reports_are_not_found_and_bad_years_are_named(
    client: TestClient[Any, Any], parties: Parties
) -> None:
    headers = await bearer(client, parties.provider_q)
    response = await client.get(
        "/v1/reports/transparency", params={"party": parties.provider_p.party_id}, headers=headers
    )
    assert response.status == 404
    observer = await make_party(client, kind="observer")
    response = await client.get("/v1/reports/transparency", headers=await bearer(client, observer))
    assert response.status == 422
    assert (await response.json())["errors"][0]["loc"] == ["query", "party"]
    response = await client.get("/v1/reports/transparency", params={"year": "1999"}, headers=headers)
    assert response.status == 422
    assert (await response.json())["errors"][0]["loc"] == ["query", "year"]
    operator = await make_party(client, kind="operator")
    response = await client.get(
        "/v1/reports/transparency",
        params={"party": parties.provider_p.party_id},
        headers=await bearer(client, operator),
    )
    assert response.status == 200
