"""``GET /v1/stats`` on a seeded year, on both databases: figures, who sees what, suppression, CSV, errors."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from referral.reporting.periods import Interval, bucket_start
from tests.auth.factories import bearer, make_party
from tests.reporting.recovery import recoverable
from tests.reporting.scenario import Parties, assert_figures, figures
from tests.reporting.seed import Case

NOW = datetime.now(UTC)
YEAR = NOW.year - 1
RANGE = {"from": f"{YEAR}-01-01", "to": f"{YEAR + 1}-01-01"}


async def get_stats(
    client: TestClient[Any, Any], headers: dict[str, str], **query: str
) -> tuple[int, dict[str, Any]]:
    response = await client.get("/v1/stats", params={**RANGE, **query}, headers=headers)
    return response.status, await response.json()


def month_of(case: Case) -> str:
    return case.received_at.date().replace(day=1).isoformat()


async def test_operator_sees_every_figure_by_period_and_type(
    client: TestClient[Any, Any], cases: list[Case]
) -> None:
    operator = await make_party(client, kind="operator")
    status, body = await get_stats(client, await bearer(client, operator), group_by="type")
    assert status == 200, body
    assert body["view"] == "all"
    assert body["suppression"] is None
    assert_figures(body["total"]["figures"], figures(cases, NOW))
    periods = {line["period"]: line for line in body["periods"]}
    assert list(periods) == [f"{YEAR}-{month:02d}-01" for month in range(1, 13)]
    for period, line in periods.items():
        in_period = [case for case in cases if month_of(case) == period]
        assert_figures(line["figures"], figures(in_period, NOW, cases))
        assert line["suppressed"] == []
    groups = {line["type"]: line["figures"] for line in body["groups"]}
    for kind in ("referral", "removal_order", "preservation_request"):
        assert_figures(groups[kind], figures([case for case in cases if case.kind == kind], NOW, cases))
    for row in body["rows"]:
        members = [case for case in cases if month_of(case) == row["period"] and case.kind == row["type"]]
        assert_figures(row["figures"], figures(members, NOW, cases))


async def test_an_authority_sees_its_own_figures_and_a_provider_its_own(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    status, body = await get_stats(
        client, await bearer(client, parties.authority_a), group_by="provider,country", interval="quarter"
    )
    assert status == 200, body
    assert body["view"] == "authority"
    mine = [case for case in cases if case.issuer is parties.authority_a]
    assert_figures(body["total"]["figures"], figures(mine, NOW, cases))
    assert {(line["provider"], line["country"]) for line in body["groups"]} == {
        (parties.provider_p.party_id, "DE"),
        (parties.provider_q.party_id, "DE"),
        (parties.provider_r.party_id, "DE"),
    }
    assert body["parties"][parties.provider_r.party_id] == "Provider R"
    for line in body["groups"]:
        members = [case for case in mine if case.addressee.party_id == line["provider"]]
        assert_figures(line["figures"], figures(members, NOW, cases))
    assert [line["period"] for line in body["periods"]] == [
        f"{YEAR}-{month:02d}-01" for month in (1, 4, 7, 10)
    ]

    status, body = await get_stats(
        client, await bearer(client, parties.provider_q), type="removal_order", group_by="authority"
    )
    assert status == 200, body
    assert body["view"] == "provider"
    theirs = [case for case in cases if case.addressee is parties.provider_q and case.kind == "removal_order"]
    assert_figures(body["total"]["figures"], figures(theirs, NOW, cases))
    assert body["total"]["figures"]["overdue"] == len(theirs)  # nothing was ever answered
    assert body["total"]["figures"]["overlaps"] == 2
    assert [line["authority"] for line in body["groups"]] == [parties.authority_a.party_id]


def published_sums(body: dict[str, Any], dimensions: list[str]) -> tuple[dict[Any, Any], list[Any]]:
    """Every published count and every sum an outsider knows to hold between them, built from the JSON."""
    count_names = [
        name
        for name in body["figures"]
        if not name.endswith(("_seconds", "_share")) and name != "share_actioned"
    ]
    lines = {
        ("row", line["period"], tuple(line[d] for d in dimensions)): line["figures"] for line in body["rows"]
    }
    lines.update({("period", line["period"], ()): line["figures"] for line in body["periods"]})
    lines.update(
        {("group", None, tuple(line[d] for d in dimensions)): line["figures"] for line in body["groups"]}
    )
    lines[("total", None, ())] = body["total"]["figures"]
    cells = {(line, name): values[name] for line, values in lines.items() for name in count_names}
    sums: list[Any] = []
    rows = [line for line in lines if line[0] == "row"]
    for name in count_names:
        for line in lines:
            if line[0] == "period":
                sums.append(((line, name), [(row, name) for row in rows if row[1] == line[1]]))
            if line[0] == "group":
                sums.append(((line, name), [(row, name) for row in rows if row[2] == line[2]]))
        total = ("total", None, ())
        sums.append(((total, name), [(line, name) for line in lines if line[0] == "period"]))
        sums.append(((total, name), [(line, name) for line in lines if line[0] == "group"]))
    for line in lines:
        within = [
            ("received", ["referrals", "removal_orders", "preservation_requests"]),
            ("received", ["pending", "actioned", "reinstated", "no_action", "withdrawn", "preserved"]),
            ("decided", ["actioned", "reinstated", "no_action"]),
            (
                "decided",
                [
                    "action_within_1h",
                    "action_1h_to_4h",
                    "action_4h_to_24h",
                    "action_1d_to_7d",
                    "action_over_7d",
                ],
            ),
        ]
        for total_name, parts in within:
            sums.append(((line, total_name), [(line, part) for part in parts]))
    return cells, sums


async def test_observers_get_aggregates_with_small_cells_suppressed_beyond_recovery(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    observer = await make_party(client, kind="observer")
    status, body = await get_stats(client, await bearer(client, observer), group_by="provider")
    assert status == 200, body
    assert body["view"] == "aggregate"
    assert body["suppression"] == {"threshold": 5}
    groups = {line["provider"]: line for line in body["groups"]}
    small = groups[parties.provider_r.party_id]
    # Provider R received 2 referrals: the count is suppressed, and marked so.
    assert small["figures"]["received"] is None
    assert "received" in small["suppressed"]
    assert small["figures"]["action_median_seconds"] is None
    assert "action_median_seconds" in small["suppressed"]
    # The grand total is published and right; subtracting the other providers from it does not give R.
    expected_total = figures(cases, NOW)["received"]
    assert body["total"]["figures"]["received"] == expected_total
    others = [
        line["figures"]["received"]
        for provider, line in groups.items()
        if provider != parties.provider_r.party_id
    ]
    assert None in others, "a complementary cell must be suppressed too"
    # Nothing published is small, and no suppressed count follows from the published ones.
    cells, sums = published_sums(body, ["provider"])
    assert all(value is None or value == 0 or value >= 5 for value in cells.values())
    assert recoverable(cells, sums) == set()
    # Aggregates come in whole periods, so the range cannot be sliced finer than a month.
    status, sliced = await get_stats(
        client,
        await bearer(client, observer),
        **{"from": f"{YEAR}-05-10T09:00:00Z", "to": f"{YEAR}-05-10T09:20:00Z"},
    )
    assert status == 200, sliced
    assert (sliced["from"], sliced["to"]) == (
        f"{YEAR}-05-01T00:00:00.000000Z",
        f"{YEAR}-06-01T00:00:00.000000Z",
    )


async def test_csv_parses_and_matches_the_json(
    client: TestClient[Any, Any], parties: Parties, cases: list[Case]
) -> None:
    observer = await make_party(client, kind="observer")
    headers = await bearer(client, observer)
    _, body = await get_stats(client, headers, group_by="provider,type")
    response = await client.get(
        "/v1/stats", params={**RANGE, "group_by": "provider,type"}, headers={**headers, "Accept": "text/csv"}
    )
    assert response.status == 200
    assert response.content_type == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    records = list(csv.DictReader(io.StringIO(await response.text())))
    json_lines = [
        *(("row", line) for line in body["rows"]),
        *(("period", line) for line in body["periods"]),
        *(("group", line) for line in body["groups"]),
        ("total", body["total"]),
    ]
    assert len(records) == len(json_lines)
    for record, (scope, line) in zip(records, json_lines, strict=True):
        assert record["scope"] == scope
        assert record["period"] == line.get("period", "")
        assert record["provider"] == line.get("provider", "")
        assert record["type"] == line.get("type", "")
        for name in body["figures"]:
            value = line["figures"][name]
            if name in line["suppressed"]:
                assert record[name] == "suppressed"
            elif value is None:
                assert record[name] == ""
            else:
                assert float(record[name]) == pytest.approx(value)
    same = await client.get(
        "/v1/stats", params={**RANGE, "group_by": "provider,type", "format": "csv"}, headers=headers
    )
    assert await same.text() == await response.text()


async def test_bad_parameters_are_named(client: TestClient[Any, Any]) -> None:
    observer = await make_party(client, kind="observer")
    headers = await bearer(client, observer)
    response = await client.get(
        "/v1/stats",
        params={
            "from": "yesterday",
            "interval": "fortnight",
            "group_by": "type,colour",
            "type": "memo",
            "country": "XX",
        },
        headers=headers,
    )
    body = await response.json()
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert sorted(error["loc"][1] for error in body["errors"]) == [
        "country",
        "from",
        "group_by",
        "interval",
        "type",
    ]
    response = await client.get(
        "/v1/stats", params={"from": "2025-01-01", "to": "2025-01-01T00:00:00Z"}, headers=headers
    )
    assert (await response.json())["errors"][0]["loc"] == ["query", "from"]
    response = await client.get(
        "/v1/stats", params={"from": "2000-01-01", "to": "2025-01-01", "interval": "day"}, headers=headers
    )
    assert (await response.json())["errors"][0]["loc"] == ["query", "interval"]
    response = await client.get("/v1/stats", params={"format": "xml"}, headers=headers)
    assert (await response.json())["errors"][0]["loc"] == ["query", "format"]


async def test_stats_need_a_token_with_the_scope(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1/stats")).status == 401
    authority = await make_party(client, kind="authority")
    response = await client.get("/v1/stats", headers=await bearer(client, authority, scope="referrals:read"))
    assert response.status == 403
    assert (await response.json())["required_scope"] == "stats:read"


@pytest.mark.parametrize("interval", ["day", "week", "month", "quarter", "year"])
async def test_every_interval_buckets_requests_in_utc_calendar_periods(
    client: TestClient[Any, Any], cases: list[Case], interval: str
) -> None:
    operator = await make_party(client, kind="operator")
    status, body = await get_stats(client, await bearer(client, operator), interval=interval)
    assert status == 200, body
    expected: dict[str, int] = {}
    for case in cases:
        start = bucket_start(case.received_at.date(), Interval(interval)).isoformat()
        expected[start] = expected.get(start, 0) + 1
    published = {line["period"]: line["figures"]["received"] for line in body["periods"]}
    assert {period: count for period, count in published.items() if count} == expected
