"""Webhook subscriptions and their deliveries: register, list, delete, retry. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.service import append_entry
from referral.auth.principal import PartyKind, Principal
from referral.core import errors
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, isoformat_or_none
from referral.feed.models import EventCursor
from referral.feed.notifier import CHANNEL
from referral.feed.outbox import WAKE_KEY, EventType
from referral.webhooks import signing
from referral.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSubscription

MAX_SUBSCRIPTIONS_PER_PARTY = 20
MAX_PAGE_SIZE = 200
PING = "webhook.ping"
SUBSCRIPTIONS_CHANGED = "webhook.subscriptions"
"""Wake-up key (where feed wake-ups name a party): a subscription was created, so delivery loops, which skip
their rounds while none is enabled, look again."""


class DeliveryState:
    """The states of a delivery."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    ALL = (PENDING, SUCCEEDED, FAILED)


class WebhookCreate(BaseModel):
    """The body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    event_types: list[EventType] = Field(default_factory=list, max_length=len(EventType))
    description: str | None = Field(default=None, max_length=256)


def parse_create(body: Any) -> WebhookCreate:
    """The validated registration request; 422 listing every invalid field."""
    try:
        return WebhookCreate.model_validate(body)
    except ValidationError as exc:
        raise errors.ValidationFailed(
            "the webhook subscription is invalid",
            errors=[
                {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
                for error in exc.errors(include_url=False, include_input=False)
            ],
        ) from exc


def _require_party(principal: Principal) -> None:
    if principal.party_kind not in (PartyKind.AUTHORITY, PartyKind.PROVIDER):
        raise errors.Forbidden("only authorities and providers subscribe to webhooks")


async def _audit(
    session: AsyncSession,
    *,
    action: str,
    subscription: WebhookSubscription,
    principal: Principal | None,
    request_id: str | None,
) -> None:
    """A change of a subscription, by its party (or by the service when ``principal`` is None)."""
    await append_entry(
        session,
        action=action,
        subject_type="webhook",
        subject_id=subscription.id,
        actor_party=principal.party_id if principal else None,
        actor_client=principal.client_id if principal else None,
        request_id=request_id,
        visible_to=[subscription.party_id],
    )


async def _announce_subscription(session: AsyncSession) -> None:
    """Once the transaction commits, wake the delivery loop of this process and (by NOTIFY) of every other."""
    session.info.setdefault(WAKE_KEY, set()).add(SUBSCRIPTIONS_CHANGED)
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify(CHANNEL, SUBSCRIPTIONS_CHANGED)))


@dataclass(frozen=True)
class Created:
    """A new subscription and its secret, which is shown this once."""

    subscription: WebhookSubscription
    secret: str


async def create_subscription(
    session: AsyncSession, *, principal: Principal, request: WebhookCreate, at: datetime, request_id: str
) -> Created:
    """Register an endpoint (its URL already checked); it receives the party's events from now on."""
    _require_party(principal)
    active = await session.scalar(
        select(func.count())
        .select_from(WebhookSubscription)
        .where(WebhookSubscription.party_id == principal.party_id, WebhookSubscription.deleted_at.is_(None))
    )
    if (active or 0) >= MAX_SUBSCRIPTIONS_PER_PARTY:
        raise errors.Conflict(f"a party has at most {MAX_SUBSCRIPTIONS_PER_PARTY} webhook subscriptions")
    # Start after the party's latest event: a new endpoint gets what happens next; the feed has the past.
    cursor = await session.scalar(
        select(EventCursor.last_cursor).where(EventCursor.party_id == principal.party_id)
    )
    subscription = WebhookSubscription(
        id=new_id(),
        party_id=principal.party_id,
        url=request.url,
        event_types=sorted({event_type.value for event_type in request.event_types}),
        description=request.description,
        secret=signing.new_secret(),
        cursor=cursor or 0,
        created_at=at,
        created_by_client=principal.client_id,
        disabled_at=None,
        disabled_reason=None,
        deleted_at=None,
    )
    session.add(subscription)
    await _audit(
        session,
        action="webhook.created",
        subscription=subscription,
        principal=principal,
        request_id=request_id,
    )
    await _announce_subscription(session)
    return Created(subscription, subscription.secret)


async def list_subscriptions(session: AsyncSession, *, principal: Principal) -> list[WebhookSubscription]:
    """The caller's subscriptions (not deleted), oldest first."""
    _require_party(principal)
    return list(
        (
            await session.execute(
                select(WebhookSubscription)
                .where(
                    WebhookSubscription.party_id == principal.party_id,
                    WebhookSubscription.deleted_at.is_(None),
                )
                .order_by(WebhookSubscription.id)
            )
        ).scalars()
    )


async def get_subscription(
    session: AsyncSession, *, principal: Principal, subscription_id: str, for_update: bool = False
) -> WebhookSubscription:
    """One of the caller's subscriptions; 404 for anyone else's, whether or not it exists."""
    _require_party(principal)
    query = select(WebhookSubscription).where(
        WebhookSubscription.id == subscription_id,
        WebhookSubscription.party_id == principal.party_id,
        WebhookSubscription.deleted_at.is_(None),
    )
    if for_update:
        query = query.with_for_update()
    subscription = (await session.execute(query)).scalar_one_or_none()
    if subscription is None:
        raise errors.NotFound("no webhook subscription with this id")
    return subscription


async def cancel_pending(session: AsyncSession, *, subscription_id: str, at: datetime, reason: str) -> None:
    """Fail every delivery of a subscription that is still waiting (it was deleted or disabled)."""
    await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.subscription_id == subscription_id,
            WebhookDelivery.state == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.FAILED, next_attempt_at=None, completed_at=at, last_error=reason)
    )


async def delete_subscription(
    session: AsyncSession, *, principal: Principal, subscription_id: str, at: datetime, request_id: str
) -> None:
    """Stop delivering to a subscription; it and its delivery history are kept, out of the lists."""
    subscription = await get_subscription(
        session, principal=principal, subscription_id=subscription_id, for_update=True
    )
    subscription.deleted_at = at
    subscription.disabled_at = subscription.disabled_at or at
    subscription.disabled_reason = subscription.disabled_reason or "deleted"
    await cancel_pending(
        session, subscription_id=subscription.id, at=at, reason="the subscription was deleted"
    )
    await _audit(
        session,
        action="webhook.deleted",
        subscription=subscription,
        principal=principal,
        request_id=request_id,
    )


async def disable_subscription(
    session: AsyncSession, *, subscription: WebhookSubscription, at: datetime, reason: str
) -> None:
    """The service stops delivering to an endpoint that is gone or keeps failing, and says why."""
    if subscription.disabled_at is not None:
        return
    subscription.disabled_at = at
    subscription.disabled_reason = reason[:512]
    await cancel_pending(
        session, subscription_id=subscription.id, at=at, reason="the subscription was disabled"
    )
    await _audit(
        session, action="webhook.disabled", subscription=subscription, principal=None, request_id=None
    )


async def list_deliveries(
    session: AsyncSession,
    *,
    principal: Principal,
    subscription_id: str,
    state: str | None,
    before: str | None,
    limit: int,
) -> tuple[list[WebhookDelivery], dict[str, list[WebhookAttempt]], str | None]:
    """A page of a subscription's deliveries, newest first, each with its attempts."""
    subscription = await get_subscription(session, principal=principal, subscription_id=subscription_id)
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    if before is not None:
        query = query.where(WebhookDelivery.id < before)
    page = list((await session.execute(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1))).scalars())
    more = len(page) > limit
    page = page[:limit]
    attempts: dict[str, list[WebhookAttempt]] = {delivery.id: [] for delivery in page}
    if page:
        for attempt in (
            await session.execute(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(list(attempts)))
                .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
            )
        ).scalars():
            attempts[attempt.delivery_id].append(attempt)
    return page, attempts, (page[-1].id if more and page else None)


async def retry_delivery(
    session: AsyncSession,
    *,
    principal: Principal,
    subscription_id: str,
    delivery_id: str,
    at: datetime,
) -> WebhookDelivery:
    """Send a delivery again now, same ``webhook-id``, with a fresh retry schedule."""
    subscription = await get_subscription(session, principal=principal, subscription_id=subscription_id)
    if subscription.disabled_at is not None:
        raise errors.Conflict(f"the subscription is disabled: {subscription.disabled_reason}")
    delivery = (
        await session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.subscription_id == subscription.id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if delivery is None:
        raise errors.NotFound("no delivery with this id for this subscription")
    if delivery.state == DeliveryState.PENDING:
        raise errors.Conflict("the delivery is still pending; it will be attempted at next_attempt_at")
    delivery.state = DeliveryState.PENDING
    delivery.next_attempt_at = at
    delivery.completed_at = None
    delivery.schedule_start = delivery.attempts
    return delivery


def subscription_view(subscription: WebhookSubscription, public_key: str) -> dict[str, Any]:
    """A subscription as the API shows it (never its secret)."""
    return {
        "id": subscription.id,
        "url": subscription.url,
        "event_types": subscription.event_types,
        "description": subscription.description,
        "enabled": subscription.disabled_at is None,
        "disabled_at": isoformat_or_none(subscription.disabled_at),
        "disabled_reason": subscription.disabled_reason,
        "created_at": isoformat(subscription.created_at),
        "signing_public_key": public_key,
    }


def attempt_view(attempt: WebhookAttempt) -> dict[str, Any]:
    """One attempt: when, the answer or the error, and its latency."""
    return {
        "number": attempt.number,
        "started_at": isoformat(attempt.started_at),
        "finished_at": isoformat_or_none(attempt.finished_at),
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
    }


def delivery_view(delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt]) -> dict[str, Any]:
    """One delivery with its attempts (the payload is not repeated: it is the event, by ``webhook_id``)."""
    return {
        "id": delivery.id,
        "webhook_id": delivery.message_id,
        "event_type": delivery.event_type,
        "state": delivery.state,
        "attempts": [attempt_view(attempt) for attempt in attempts],
        "next_attempt_at": isoformat_or_none(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": isoformat(delivery.created_at),
        "completed_at": isoformat_or_none(delivery.completed_at),
    }
