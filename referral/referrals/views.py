"""How referrals are shown: list rows, the full view, status history entries (JSON-ready dicts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from referral.core.timeutil import isoformat, isoformat_or_none
from referral.referrals import lifecycle
from referral.referrals.documents import Status
from referral.referrals.models import Referral, ReferralStatus


class ReferralView(Protocol):
    """What showing a referral reads: a stored ``Referral`` or one just written (``service.NewReferral``)."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def issuer_id(self) -> str: ...
    @property
    def addressee_id(self) -> str: ...
    @property
    def jti(self) -> str: ...
    @property
    def jws(self) -> str: ...
    @property
    def document(self) -> dict[str, Any]: ...
    @property
    def category(self) -> str: ...
    @property
    def item_count(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def deadline(self) -> datetime | None: ...
    @property
    def delivered_at(self) -> datetime | None: ...
    @property
    def acknowledged_at(self) -> datetime | None: ...
    @property
    def decided_at(self) -> datetime | None: ...
    @property
    def closed_at(self) -> datetime | None: ...
    @property
    def preserved_until(self) -> datetime | None: ...
    @property
    def audit_entry_id(self) -> str: ...
    @property
    def receipt(self) -> str: ...


def is_overdue(referral: ReferralView, now: datetime) -> bool:
    """Whether the referral's deadline has passed without a decision."""
    return (
        referral.deadline is not None
        and referral.deadline < now
        and referral.decided_at is None
        and Status(referral.status) in lifecycle.OPEN_STATUSES
    )


def summaries(referrals: Sequence[ReferralView], now: datetime) -> list[dict[str, Any]]:
    """List rows: what a case list needs, without the content of the items."""
    return [summary(referral, now) for referral in referrals]


def summary(referral: ReferralView, now: datetime) -> dict[str, Any]:
    """One referral's fields without its content."""
    return {
        "id": referral.id,
        "type": referral.type,
        "issuer": referral.issuer_id,
        "addressee": referral.addressee_id,
        "category": referral.category,
        "item_count": referral.item_count,
        "status": referral.status,
        "received_at": isoformat(referral.received_at),
        "deadline": isoformat_or_none(referral.deadline),
        "overdue": is_overdue(referral, now),
        "delivered_at": isoformat_or_none(referral.delivered_at),
        "acknowledged_at": isoformat_or_none(referral.acknowledged_at),
        "decided_at": isoformat_or_none(referral.decided_at),
        "closed_at": isoformat_or_none(referral.closed_at),
        "preserved_until": isoformat_or_none(referral.preserved_until),
        "case_reference": referral.document.get("case_reference"),
        "audit_entry_id": referral.audit_entry_id,
    }


def status_view(status: ReferralStatus) -> dict[str, Any]:
    """One entry of the status history, with its signed document when a party signed it."""
    return {
        "id": status.id,
        "status": status.status,
        "previous_status": status.previous_status,
        "actor": status.actor_party_id,
        "recorded_at": isoformat(status.recorded_at),
        "jws": status.jws,
        "document": status.document,
        "audit_entry_id": status.audit_entry_id,
        "receipt": status.receipt,
    }


def detail(
    referral: Referral, history: Sequence[ReferralStatus], links: Sequence[tuple[str, bool]], now: datetime
) -> dict[str, Any]:
    """The full view: the original JWS, parsed fields, status, deadline, history and related referrals."""
    return {
        **summary(referral, now),
        "jws": referral.jws,
        "document": referral.document,
        "receipt": referral.receipt,
        "history": [status_view(status) for status in history],
        "related": [{"referral_id": related_id, "same_issuer": same} for related_id, same in links],
    }
