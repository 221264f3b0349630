"""A year of referral traffic between two authorities and three providers, and its figures worked out by hand.

The expected figures are computed here from the cases alone (their kinds, times and statuses), following
the definitions in the README's reporting section, never from the database or the service's code.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from tests.auth.factories import TestParty
from tests.reporting.seed import Case, Step, backdated_party

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DECISIONS = ("action_taken", "partially_actioned", "no_action")
OPEN = ("submitted", "delivered", "acknowledged", "in_review", "info_requested", "info_provided")
OUTCOME = {
    **dict.fromkeys(OPEN, "pending"),
    **dict.fromkeys(("action_taken", "partially_actioned", "contested", "upheld"), "actioned"),
    "reinstated": "reinstated",
    "no_action": "no_action",
    "withdrawn": "withdrawn",
    **dict.fromkeys(("preserved", "preservation_extended", "preservation_released", "expired"), "preserved"),
}


@dataclass(frozen=True)
class Parties:
    """The parties of the scenario."""

    authority_a: TestParty
    authority_b: TestParty
    provider_p: TestParty
    provider_q: TestParty
    provider_r: TestParty


async def make_parties(client: TestClient[Any, Any]) -> Parties:
    """Two authorities (DE, FR) and three providers (IE, NL, US)."""
    return Parties(
        authority_a=await backdated_party(client, kind="authority", country="DE", name="Authority A"),
        authority_b=await backdated_party(client, kind="authority", country="FR", name="Authority B"),
        provider_p=await backdated_party(client, kind="provider", country="IE", name="Provider P"),
        provider_q=await backdated_party(client, kind="provider", country="NL", name="Provider Q"),
        provider_r=await backdated_party(client, kind="provider", country="US", name="Provider R"),
    )


def cases_for(parties: Parties, months: list[date]) -> list[Case]:
    """The requests of the scenario, received in ``months`` (three of them)."""
    a, b = parties.authority_a, parties.authority_b
    p, q, r = parties.provider_p, parties.provider_q, parties.provider_r
    cases: list[Case] = []
    for number, month in enumerate(months):
        at = datetime(month.year, month.month, 10, 9, tzinfo=UTC)

        def case(
            issuer: TestParty, addressee: TestParty, kind: str, *steps: Step, offset: int, at: datetime = at
        ) -> Case:
            return Case(issuer, addressee, kind, at + offset * MINUTE, list(steps))

        for offset in range(3):
            cases.append(
                case(
                    a,
                    p,
                    "removal_order",
                    Step("acknowledged", 5 * MINUTE + offset * MINUTE),
                    Step("action_taken", 30 * MINUTE + offset * MINUTE),
                    offset=offset,
                )
            )
        cases.append(
            case(
                a,
                p,
                "removal_order",
                Step("acknowledged", 10 * MINUTE),
                Step("action_taken", 2 * HOUR),
                offset=3,
            )
        )
        cases.append(
            case(
                a,
                p,
                "removal_order",
                Step("acknowledged", 15 * MINUTE),
                Step("no_action", 40 * MINUTE),
                offset=4,
            )
        )
        cases.append(case(a, p, "referral", Step("acknowledged", HOUR), Step("action_taken", DAY), offset=5))
        cases.append(
            case(
                b,
                p,
                "referral",
                Step("acknowledged", 2 * HOUR),
                Step("partially_actioned", 3 * DAY),
                offset=6,
            )
        )
        cases.append(case(a, q, "removal_order", offset=7))
        cases.append(case(a, q, "removal_order", offset=8))
        cases.append(case(b, q, "referral", Step("acknowledged", 30 * MINUTE), offset=9))
        cases.append(
            case(
                b,
                q,
                "preservation_request",
                Step("acknowledged", HOUR),
                Step("preserved", 2 * HOUR, preserved_for=30 * DAY),
                offset=10,
            )
        )
        if number == 0:
            cases.append(
                case(
                    b,
                    q,
                    "preservation_request",
                    Step("acknowledged", HOUR),
                    Step("preserved", 2 * HOUR, preserved_for=-DAY),
                    offset=11,
                )
            )
        if number == 1:
            extended = (
                Step("acknowledged", HOUR),
                Step("preserved", 2 * HOUR, preserved_for=10 * DAY),
                Step("preservation_extended", 3 * DAY, preserved_for=40 * DAY),
            )
            cases.append(case(b, q, "preservation_request", *extended, offset=11))
            # Extended, then released: an ended preservation that counts as extended (from its history).
            cases.append(
                case(
                    b, q, "preservation_request", *extended, Step("preservation_released", 5 * DAY), offset=15
                )
            )
            cases.append(case(a, q, "referral", Step("withdrawn", DAY), offset=12))
        if number == 2:
            for offset, last in ((13, "reinstated"), (14, "upheld")):
                cases.append(
                    case(
                        a,
                        r,
                        "referral",
                        Step("acknowledged", HOUR),
                        Step("action_taken", (offset - 8) * HOUR),
                        Step("contested", 2 * DAY),
                        Step(last, (offset - 10) * DAY),
                        offset=offset,
                    )
                )
    # De-confliction: a later removal order to Q names the URL of an earlier, still open one.
    earlier = next(case for case in reversed(cases) if case.addressee is q and case.kind == "removal_order")
    earlier.urls = [f"https://content.example/overlap/{index}" for index in range(3)]
    cases.append(
        Case(
            a,
            q,
            "removal_order",
            earlier.received_at + 20 * MINUTE,
            urls=[
                earlier.urls[0],
                "https://content.example/overlap/new/1",
                "https://content.example/overlap/new/2",
            ],
        )
    )
    return cases


def _step(case: Case, status: str) -> Step | None:
    return next((step for step in case.steps if step.status == status), None)


def decision(case: Case) -> Step | None:
    """The provider's decision, if any."""
    return next((step for step in case.steps if step.status in DECISIONS), None)


def final_status(case: Case, now: datetime) -> str:
    """Where the case stands now (lapsed preservations have expired)."""
    if not case.steps:
        return "submitted"
    last = case.steps[-1]
    if last.status in ("preserved", "preservation_extended"):
        assert last.preserved_for is not None
        if now + last.preserved_for <= now:
            return "expired"
    return last.status


def figures(cases: list[Case], now: datetime, universe: list[Case] | None = None) -> dict[str, Any]:
    """The figures of a set of cases, by the definitions (overlaps looked for among ``universe``)."""
    everyone = cases if universe is None else universe
    statuses = [final_status(case, now) for case in cases]
    outcomes = [OUTCOME[status] for status in statuses]
    ack = sorted(step.after.total_seconds() for case in cases if (step := _step(case, "acknowledged")))
    decided = [(case, step) for case in cases if (step := decision(case))]
    action = sorted(step.after.total_seconds() for _, step in decided)
    removal_orders = [case for case in cases if case.kind == "removal_order"]
    within = [
        case
        for case in removal_orders
        if (step := decision(case)) and step.status != "no_action" and step.after <= HOUR
    ]
    due = [
        case
        for case in removal_orders
        if final_status(case, now) != "withdrawn" and (decision(case) or case.received_at + HOUR < now)
    ]
    overdue = [
        case
        for case in removal_orders
        if decision(case) is None and final_status(case, now) in OPEN and case.received_at + HOUR < now
    ]
    preservations = [case for case in cases if case.kind == "preservation_request"]
    actioned = outcomes.count("actioned") + outcomes.count("reinstated")
    result: dict[str, Any] = {
        "received": len(cases),
        "referrals": sum(case.kind == "referral" for case in cases),
        "removal_orders": len(removal_orders),
        "preservation_requests": len(preservations),
        **{outcome: outcomes.count(outcome) for outcome in set(OUTCOME.values())},
        "decided": len(decided),
        "acknowledged": len(ack),
        "removal_orders_within_deadline": len(within),
        "removal_orders_due": len(due),
        "overdue": len(overdue),
        "preservations_active": sum(
            final_status(case, now) in ("preserved", "preservation_extended") for case in preservations
        ),
        "preservations_extended": sum(
            _step(case, "preservation_extended") is not None for case in preservations
        ),
        "preservations_expired": statuses.count("expired"),
        "contested": sum(_step(case, "contested") is not None for case in cases),
        "upheld": statuses.count("upheld"),
        "overlaps": sum(
            any(
                other is not case and other.addressee is case.addressee and set(other.urls) & set(case.urls)
                for other in everyone
            )
            for case in cases
        ),
        "share_actioned": round(actioned / len(decided), 4) if decided else None,
        "removal_orders_within_deadline_share": round(len(within) / len(due), 4) if due else None,
        "ack_median_seconds": _percentile(ack, 5),
        "ack_p90_seconds": _percentile(ack, 9),
        "action_median_seconds": _percentile(action, 5),
        "action_p90_seconds": _percentile(action, 9),
        "action_within_1h": sum(seconds <= 3600 for seconds in action),
        "action_1h_to_4h": sum(3600 < seconds <= 4 * 3600 for seconds in action),
        "action_4h_to_24h": sum(4 * 3600 < seconds <= 86400 for seconds in action),
        "action_1d_to_7d": sum(86400 < seconds <= 7 * 86400 for seconds in action),
        "action_over_7d": sum(seconds > 7 * 86400 for seconds in action),
    }
    return result


def _percentile(values: list[float], tenths: int) -> float | None:
    """The median (5) or 90th percentile (9) by the standard library's inclusive method."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    if tenths == 5:
        return float(statistics.median(values))
    return statistics.quantiles(values, n=10, method="inclusive")[tenths - 1]


def assert_figures(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every expected figure matches (durations to the millisecond)."""
    for name, value in expected.items():
        if name.endswith("_seconds") and value is not None:
            assert actual[name] is not None, name
            assert abs(actual[name] - value) < 0.01, (name, actual[name], value)
        else:
            assert actual[name] == value, (name, actual[name], value)
