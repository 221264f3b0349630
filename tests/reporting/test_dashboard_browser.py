"""The dashboard in a real browser: Debian's headless Chromium against the app on a live 127.0.0.1 port.

An observer signs in with its access token through the form; the charts must be drawn (non-blank canvases)
from the seeded numbers, the type filter must change them, every request must stay on 127.0.0.1, and a
screenshot is kept in ``var/test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from referral.config import Settings
from tests.auth.factories import access_token, make_party
from tests.reporting.browser import Page, chromium_or_skip, launch
from tests.reporting.seed import Case
from tests.reporting.test_dashboard import recent_months

NOW = datetime.now(UTC)
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
CHARTS = ("chart-timeline", "chart-action-time", "chart-deadline")


@pytest.fixture
def backend() -> str:
    """One browser run is enough: the figures themselves are checked on both databases elsewhere."""
    return "sqlite"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Threshold 1: nothing is small, so the observer's aggregates equal the seeded counts exactly.
    return settings.model_copy(update={"stats_suppression_threshold": 1})


@pytest.fixture
def months() -> list[date]:
    return recent_months(NOW)


def per_month(cases: list[Case], periods: list[str]) -> list[int]:
    counts = dict.fromkeys(periods, 0)
    for case in cases:
        counts[case.received_at.date().replace(day=1).isoformat()] += 1
    return [counts[period] for period in periods]


async def chart_series(page: Page, chart: str) -> list[list[Any]]:
    series: list[list[Any]] = await page.evaluate(
        f"Chart.getChart({json.dumps(chart)}).data.datasets.map(dataset => dataset.data)"
    )
    return series


async def painted_pixels(page: Page, chart: str) -> int:
    """How many pixels of the chart's canvas are not blank."""
    count: int = await page.evaluate(
        f"""(() => {{
          const canvas = document.getElementById({json.dumps(chart)});
          const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          let painted = 0;
          for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
          return painted;
        }})()"""
    )
    return count


async def test_the_dashboard_draws_the_seeded_numbers_offline(
    client: TestClient[Any, Any], cases: list[Case], tmp_path: Path
) -> None:
    executable = chromium_or_skip()
    observer = await make_party(client, kind="observer")
    token = await access_token(client, observer)
    base = str(client.make_url("/")).rstrip("/")

    async with launch(executable, tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.navigate(f"{base}/dashboard")
        # Not signed in: the dashboard sends the browser to the sign-in form.
        await page.wait_for("location.pathname === '/dashboard/login'")
        await page.evaluate(
            f"document.getElementById('access_token').value = {json.dumps(token)};"
            "document.querySelector('form.login').submit(); true"
        )
        await page.wait_for(
            "location.pathname === '/dashboard' && document.readyState === 'complete'"
            " && document.body.dataset.chartsReady === 'true'"
        )

        periods: list[str] = await page.evaluate("Chart.getChart('chart-timeline').data.labels")
        assert len(periods) == 12
        received, actioned, no_action, pending = await chart_series(page, "chart-timeline")
        assert received == per_month(cases, periods)
        assert actioned == per_month(
            [
                case
                for case in cases
                if case.steps
                and case.steps[-1].status in ("action_taken", "partially_actioned", "contested", "upheld")
            ],
            periods,
        )
        assert no_action == per_month(
            [case for case in cases if case.steps and case.steps[-1].status == "no_action"], periods
        )
        assert sum(pending) == sum(
            1 for case in cases if not case.steps or case.steps[-1].status == "acknowledged"
        )
        (decided,) = await chart_series(page, "chart-action-time")
        assert sum(decided) == sum(
            1
            for case in cases
            if any(step.status in ("action_taken", "partially_actioned", "no_action") for step in case.steps)
        )
        for chart in CHARTS:
            assert await painted_pixels(page, chart) > 500, f"{chart} is blank"
        overview = await page.evaluate("document.getElementById('overview-received').textContent")
        assert overview == str(len(cases))
        await page.screenshot(ARTIFACTS / "dashboard.png")

        # The type filter redraws everything for removal orders only.
        await page.evaluate(
            "document.getElementById('filter-type').value = 'removal_order';"
            "document.getElementById('filters').submit(); true"
        )
        await page.wait_for(
            "location.search.includes('type=removal_order') && document.readyState === 'complete'"
            " && document.body.dataset.chartsReady === 'true'"
        )
        orders = [case for case in cases if case.kind == "removal_order"]
        received, *_ = await chart_series(page, "chart-timeline")
        assert received == per_month(orders, periods)
        due, within = await chart_series(page, "chart-deadline")
        assert sum(within) == sum(
            1
            for case in orders
            if any(
                step.status == "action_taken" and step.after.total_seconds() <= 3600 for step in case.steps
            )
        )
        assert sum(due) == len(orders)  # all are decided or past their one-hour deadline
        await page.screenshot(ARTIFACTS / "dashboard-removal-orders.png")

        assert page.errors == [], page.errors
        assert page.requests, "the browser's requests were recorded"
        outside = [
            url
            for url in page.requests
            if urlsplit(url).scheme not in ("data", "about", "blob") and urlsplit(url).hostname != "127.0.0.1"
        ]
        assert outside == [], f"requests left 127.0.0.1: {outside}"
        assert any(
            url.endswith("/dashboard/static/vendor/chart.js/chart.umd.min.js") for url in page.requests
        )
