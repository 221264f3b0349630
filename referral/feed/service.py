"""Reading the feed: a party's events after a cursor, in commit order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.auth.principal import PartyKind, Principal
from referral.core import errors
from referral.core.timeutil import isoformat
from referral.feed.models import OutboxEvent
from referral.feed.outbox import EventType
from referral.referrals.models import Referral
from referral.referrals.service import deliver_many

MAX_PAGE_SIZE = 500
MAX_CURSOR = 2**63 - 1


@dataclass(frozen=True)
class FeedPage:
    """Events after the requested cursor, and the cursor to ask after next time."""

    events: list[OutboxEvent]
    next_cursor: int


def parse_cursor(raw: str | None) -> int:
    """A feed cursor (a decimal string; none means the beginning); 400 for anything else."""
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_CURSOR:
        raise errors.BadRequest("after must be a cursor returned by the feed (a non-negative integer)")
    return int(raw)


async def read_feed(
    session: AsyncSession, *, principal: Principal, after: int, limit: int, at: datetime, request_id: str
) -> FeedPage:
    """The caller's events after ``after``; referrals a provider receives here are delivered (and audited)."""
    if principal.party_kind not in (PartyKind.AUTHORITY, PartyKind.PROVIDER):
        raise errors.Forbidden("only authorities and providers have a feed")
    query = (
        select(OutboxEvent)
        .where(OutboxEvent.recipient_id == principal.party_id, OutboxEvent.cursor > after)
        .order_by(OutboxEvent.cursor)
        .limit(limit)
    )
    if principal.party_kind is not PartyKind.PROVIDER:
        page = list((await session.execute(query)).scalars())
        return FeedPage(page, page[-1].cursor if page else after)
    # A provider receives the signed documents of the new referrals in its page: read with the page (one
    # statement), they are delivered and their reads audited.
    rows = (
        await session.execute(
            query.add_columns(Referral).outerjoin(
                Referral,
                and_(
                    OutboxEvent.type == EventType.REFERRAL_SUBMITTED.value,
                    Referral.id == OutboxEvent.referral_id,
                    Referral.addressee_id == principal.party_id,
                ),
            )
        )
    ).all()
    page = [event for event, _referral in rows]
    received = [referral for _event, referral in rows if referral is not None]
    await deliver_many(session, referrals=received, at=at, request_id=request_id, reader=principal)
    return FeedPage(page, page[-1].cursor if page else after)


def event_body(event: OutboxEvent) -> dict[str, Any]:
    """An event as webhooks carry it: ``{type, id, created_at, data}``."""
    return {"type": event.type, "id": event.id, "created_at": isoformat(event.created_at), "data": event.data}


def event_view(event: OutboxEvent) -> dict[str, Any]:
    """An event as the feed lists it: its body and its cursor."""
    return {"cursor": str(event.cursor), **event_body(event)}
