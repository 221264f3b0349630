"""Annual transparency reports: the figures TCO Regulation (EU) 2021/784 Art. 7 (hosting service providers)
and Art. 8 (competent authorities) ask for, as far as this service records them.

What the service cannot know (measures against reappearance, penalties, review proceedings in court) is
listed under ``not_recorded`` with its article, so a report never looks complete when it is not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from referral.auth.principal import PartyKind, Principal
from referral.auth.tenancy import ensure_visible
from referral.core import errors
from referral.core.timeutil import isoformat
from referral.parties.models import Party
from referral.referrals.documents import DocumentType, NoActionReason, Outcome, Status
from referral.referrals.models import Referral, ReferralStatus
from referral.reporting import service
from referral.reporting.params import Dimension, StatsQuery
from referral.reporting.periods import Interval
from referral.reporting.queries import Audience
from referral.reporting.service import Reader, View

MIN_YEAR: Final = 2000
REGULATION: Final = "Regulation (EU) 2021/784 on addressing the dissemination of terrorist content online"
_DECISIONS = (Status.ACTION_TAKEN.value, Status.PARTIALLY_ACTIONED.value, Status.NO_ACTION.value)
# Art. 3(7): force majeure or de facto impossibility; Art. 3(8): manifest errors or insufficient information.
GROUNDS: Final = {
    NoActionReason.FORCE_MAJEURE.value: "Art. 3(7)",
    NoActionReason.TECHNICAL_IMPOSSIBILITY.value: "Art. 3(7)",
    NoActionReason.MANIFEST_ERROR.value: "Art. 3(8)",
    NoActionReason.INSUFFICIENT_INFORMATION.value: "Art. 3(8)",
}
NOT_RECORDED: Final = {
    PartyKind.PROVIDER: [
        ("7(3)(a)", "measures to identify and remove terrorist content or disable access to it"),
        ("7(3)(b)", "measures against the reappearance of removed material, including automated tools"),
        ("7(3)(c)", "items removed following specific measures (Art. 5) rather than removal orders"),
        ("7(3)(e)", "number and outcome of administrative or judicial review proceedings"),
        ("7(3)(f)", "reinstatements required as a result of review proceedings"),
    ],
    PartyKind.AUTHORITY: [
        ("8(1)(a)", "removal orders subject to Art. 3(2) and removal orders scrutinised under Art. 4"),
        ("8(1)(b)", "decisions under Art. 5(4), (6) or (7) and their implementation"),
        ("8(1)(c)", "administrative or judicial review proceedings and their outcome"),
        ("8(1)(d)", "decisions imposing penalties under Art. 18"),
    ],
}


def year_range(year: int) -> tuple[datetime, datetime]:
    """The calendar year in UTC, as ``[start, end)``."""
    return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)


async def report_party(session: AsyncSession, *, principal: Principal, party_id: str) -> Party:
    """The party whose report is asked for: one's own, or any authority or provider for an operator."""
    ensure_visible(principal, [party_id], what="party", operators_see_all=True)
    party = await session.get(Party, party_id)
    if party is None:
        raise errors.NotFound("no such party")
    if party.kind not in (PartyKind.AUTHORITY, PartyKind.PROVIDER):
        raise errors.ValidationFailed(
            "transparency reports are for authorities (Art. 8) and providers (Art. 7)",
            errors=[{"loc": ["query", "party"], "msg": "must be an authority or a provider", "type": "kind"}],
        )
    return party


async def _item_outcomes(session: AsyncSession, audience: Audience, start: datetime, end: datetime) -> Any:
    """Per type, how many items got each outcome in the providers' decisions (JSON arrays unnested in SQL)."""
    dialect = session.get_bind().dialect.name
    outcome: Any
    if dialect == "postgresql":
        items = func.json_array_elements(ReferralStatus.document["items"]).table_valued("value").alias("item")
        outcome = items.c.value.op("->>")("outcome")
    else:
        items = func.json_each(ReferralStatus.document, "$.items").table_valued("value").alias("item")
        outcome = func.json_extract(items.c.value, "$.outcome")
    statement = (
        select(Referral.type, outcome, func.count())
        .select_from(ReferralStatus)
        .join(Referral, Referral.id == ReferralStatus.referral_id)
        .join(items, true())
        .where(*_scope(audience, start, end), ReferralStatus.status.in_(_DECISIONS))
        .group_by(Referral.type, outcome)
    )
    return await session.execute(statement)


async def _reasons(session: AsyncSession, audience: Audience, start: datetime, end: datetime) -> Any:
    """Per type, the reasons given for not acting on (all) items."""
    reason = ReferralStatus.document["reason"].as_string()
    statement = (
        select(Referral.type, reason, func.count())
        .select_from(ReferralStatus)
        .join(Referral, Referral.id == ReferralStatus.referral_id)
        .where(*_scope(audience, start, end), ReferralStatus.status.in_(_DECISIONS), reason.is_not(None))
        .group_by(Referral.type, reason)
    )
    return await session.execute(statement)


def _scope(audience: Audience, start: datetime, end: datetime) -> list[Any]:
    conditions = [Referral.received_at >= start, Referral.received_at < end]
    if audience.issuer_id is not None:
        conditions.append(Referral.issuer_id == audience.issuer_id)
    if audience.addressee_id is not None:
        conditions.append(Referral.addressee_id == audience.addressee_id)
    return conditions


def _type_section(
    figures: dict[str, int | float | None], items: dict[str, int], reasons: dict[str, int]
) -> dict[str, Any]:
    return {
        "received": figures["received"],
        "actioned": (figures["actioned"] or 0) + (figures["reinstated"] or 0),
        "actioned_within_deadline": figures["removal_orders_within_deadline"],
        "not_actioned": figures["no_action"],
        "pending": figures["pending"],
        "withdrawn": figures["withdrawn"],
        "overdue": figures["overdue"],
        "median_time_to_action_seconds": figures["action_median_seconds"],
        "items": {outcome.value: items.get(outcome.value, 0) for outcome in Outcome},
        "reasons_for_not_acting": [
            {"reason": reason, "grounds": GROUNDS.get(reason), "count": count}
            for reason, count in sorted(reasons.items())
        ],
    }


async def transparency_report(
    session: AsyncSession, *, party: Party, year: int, now: datetime, threshold: int
) -> dict[str, Any]:
    """The year's report of ``party``: Art. 7 figures for a provider, Art. 8 figures for an authority."""
    kind = PartyKind(party.kind)
    start, end = year_range(year)
    is_provider = kind is PartyKind.PROVIDER
    audience = Audience(addressee_id=party.id) if is_provider else Audience(issuer_id=party.id)
    reader = Reader(View.PROVIDER if is_provider else View.AUTHORITY, audience)
    by_type = await service.compute_stats(
        session,
        query=StatsQuery(start=start, end=end, interval=Interval.YEAR, group_by=(Dimension.TYPE,)),
        reader=reader,
        now=now,
        threshold=threshold,
    )
    figures_of = {line.group[0]: line.figures for line in by_type.groups}
    empty: dict[str, int | float | None] = dict.fromkeys(by_type.total.figures, 0)
    empty["action_median_seconds"] = None
    items: dict[str, dict[str, int]] = {}
    for referral_type, outcome, count in await _item_outcomes(session, audience, start, end):
        items.setdefault(referral_type, {})[str(outcome)] = int(count)
    reasons: dict[str, dict[str, int]] = {}
    for referral_type, reason, count in await _reasons(session, audience, start, end):
        reasons.setdefault(referral_type, {})[str(reason)] = int(count)

    def section(referral_type: DocumentType) -> dict[str, Any]:
        value = referral_type.value
        return _type_section(figures_of.get(value, empty), items.get(value, {}), reasons.get(value, {}))

    preservation = figures_of.get(DocumentType.PRESERVATION_REQUEST.value, empty)
    total = by_type.total.figures
    report: dict[str, Any] = {
        "regulation": REGULATION,
        "article": "7" if is_provider else "8",
        "party": {"id": party.id, "name": party.name, "kind": party.kind, "country": party.country},
        "year": year,
        "from": isoformat(start),
        "to": isoformat(end),
        "complete": end <= now,
        "generated_at": isoformat(now),
        "removal_orders": section(DocumentType.REMOVAL_ORDER),
        "referrals": section(DocumentType.REFERRAL),
        "preservation_requests": {
            "received": preservation["received"],
            "preserved": preservation["preserved"],
            "active": preservation["preservations_active"],
            "extended": preservation["preservations_extended"],
            "expired": preservation["preservations_expired"],
            "not_actioned": preservation["no_action"],
            "withdrawn": preservation["withdrawn"],
        },
        # Art. 7(3)(d) and (g): complaints by content providers (Art. 10) and reinstatements after them.
        "complaints": {
            "received": total["contested"],
            "upheld": total["upheld"],
            "reinstated": total["reinstated"],
            "pending": (total["contested"] or 0) - (total["upheld"] or 0) - (total["reinstated"] or 0),
        },
        "not_recorded": [{"article": article, "figure": figure} for article, figure in NOT_RECORDED[kind]],
    }
    if not is_provider:
        report["removal_orders"]["by_provider"] = await _by_provider(
            session, reader=reader, start=start, end=end, now=now, threshold=threshold
        )
    return report


async def _by_provider(
    session: AsyncSession, *, reader: Reader, start: datetime, end: datetime, now: datetime, threshold: int
) -> list[dict[str, Any]]:
    """Art. 8(1)(a): how each provider implemented the authority's removal orders."""
    table = await service.compute_stats(
        session,
        query=StatsQuery(
            start=start,
            end=end,
            interval=Interval.YEAR,
            group_by=(Dimension.PROVIDER,),
            filters={Dimension.TYPE: (DocumentType.REMOVAL_ORDER.value,)},
        ),
        reader=reader,
        now=now,
        threshold=threshold,
    )
    return [
        {
            "provider": line.group[0],
            "name": table.parties.get(line.group[0]),
            "issued": line.figures["received"],
            "actioned": (line.figures["actioned"] or 0) + (line.figures["reinstated"] or 0),
            "actioned_within_deadline": line.figures["removal_orders_within_deadline"],
            "not_actioned": line.figures["no_action"],
            "pending": line.figures["pending"],
            "withdrawn": line.figures["withdrawn"],
        }
        for line in table.groups
    ]


def default_year(now: datetime) -> int:
    """The last complete calendar year: reports are due by 1 March of the year after."""
    return now.year - 1


def parse_year(raw: str | None, now: datetime) -> int:
    """The ``year`` parameter; 422 unless it is a year from 2000 to the current one."""
    if raw is None:
        return default_year(now)
    if not raw.isdigit() or not MIN_YEAR <= int(raw) <= now.year:
        raise errors.ValidationFailed(
            "the report query is invalid",
            errors=[
                {
                    "loc": ["query", "year"],
                    "msg": f"must be a year from {MIN_YEAR} to {now.year}",
                    "type": "value_error",
                }
            ],
        )
    return int(raw)
