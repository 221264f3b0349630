"""The events a referral's changes emit, and who receives them.

Both parties of a referral receive its events, so that each side's feed is the complete story of its cases;
the exceptions are ``status.recorded`` for a delivery (the provider caused it by fetching, only the authority
needs to hear of it) and ``referral.related``, which names another authority's referral only by id.
Event data never carries more than the recipient could read at ``GET /v1/referrals/{id}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from referral.core.timeutil import isoformat
from referral.feed.outbox import Event, EventType
from referral.referrals.documents import Status
from referral.referrals.models import Referral, ReferralStatus
from referral.referrals.views import ReferralView, status_view, summary


def _to_both(referral: ReferralView, event_type: EventType, at: datetime, **data: object) -> list[Event]:
    body = {"referral": summary(referral, at), **data}
    return [
        Event(recipient_id=party_id, type=event_type, created_at=at, data=body, referral_id=referral.id)
        for party_id in (referral.issuer_id, referral.addressee_id)
    ]


def submitted(referral: ReferralView, at: datetime) -> list[Event]:
    """A new referral, with its signed document: the provider can act on it without another request."""
    return _to_both(referral, EventType.REFERRAL_SUBMITTED, at, jws=referral.jws)


def status_recorded(referral: Referral, status: ReferralStatus, at: datetime) -> list[Event]:
    """A signed status (a withdrawal is ``referral.withdrawn``)."""
    event_type = (
        EventType.REFERRAL_WITHDRAWN if status.status == Status.WITHDRAWN.value else EventType.STATUS_RECORDED
    )
    return _to_both(referral, event_type, at, status=status_view(status))


def delivered(referral: Referral, status: ReferralStatus, at: datetime) -> list[Event]:
    """The provider fetched the referral for the first time: news for the authority only."""
    body = {"referral": summary(referral, at), "status": status_view(status)}
    return [
        Event(
            recipient_id=referral.issuer_id,
            type=EventType.STATUS_RECORDED,
            created_at=at,
            data=body,
            referral_id=referral.id,
        )
    ]


def overdue(referral: Referral, at: datetime) -> list[Event]:
    """The deadline passed without a decision."""
    return _to_both(referral, EventType.REFERRAL_OVERDUE, at)


def preservation_expiring(referral: Referral, at: datetime) -> list[Event]:
    """The preservation lapses within the warning period unless it is extended."""
    assert referral.preserved_until is not None
    return _to_both(
        referral, EventType.PRESERVATION_EXPIRING, at, preserved_until=isoformat(referral.preserved_until)
    )


def preservation_expired(referral: Referral, status: ReferralStatus, at: datetime) -> list[Event]:
    """The preservation lapsed; the service recorded ``expired``."""
    return _to_both(referral, EventType.PRESERVATION_EXPIRED, at, status=status_view(status))


def related(referral: ReferralView, others: Iterable[tuple[str, str]], at: datetime) -> list[Event]:
    """De-confliction: a new referral covers what open ones (``(id, issuer_id)`` pairs) already cover.

    Each authority hears about its own referral and learns of the other only its id and whether it is its
    own; the provider hears once per pair.
    """
    events = []
    for other_id, other_issuer in others:
        same_issuer = other_issuer == referral.issuer_id
        for recipient, subject, other in (
            (referral.issuer_id, referral.id, other_id),
            (other_issuer, other_id, referral.id),
            (referral.addressee_id, referral.id, other_id),
        ):
            if recipient == referral.issuer_id and subject == other_id:
                continue  # the same authority: already told under its new referral
            events.append(
                Event(
                    recipient_id=recipient,
                    type=EventType.REFERRAL_RELATED,
                    created_at=at,
                    data={
                        "referral_id": subject,
                        "related": {"referral_id": other, "same_issuer": same_issuer},
                    },
                    referral_id=subject,
                )
            )
    return events
