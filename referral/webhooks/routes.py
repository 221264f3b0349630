"""``/v1/webhooks``: subscriptions, their deliveries, retries and a test ping."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from sqlalchemy import select

from referral.auth.principal import require_scope
from referral.core import errors
from referral.core.appkeys import service_keys_key, sessionmaker_key, settings_key
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, utcnow
from referral.core.web import json_body, json_response, request_id
from referral.feed.notifier import notifier_key
from referral.webhooks import service, signing
from referral.webhooks.delivery import attempt, claim, guard_key
from referral.webhooks.models import WebhookAttempt, WebhookDelivery
from referral.webhooks.ssrf import UnsafeDestination, check_destination

routes = web.RouteTableDef()

# Subscribing to events is part of reading one's referrals: the events carry what GET /v1/referrals shows.
SCOPE = "referrals:read"
DEFAULT_PAGE_SIZE = 50


def _public_key(request: web.Request) -> str:
    return signing.public_key_text(request.app[service_keys_key].active.public_key)


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("send application/json")
    return await json_body(request)


@routes.post("/v1/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    """Register an endpoint; the answer carries its secret, shown this once."""
    principal = require_scope(request, SCOPE)
    body = service.parse_create(await _json_body(request))
    allow_private = request.app[settings_key].webhook_allow_private
    try:
        await check_destination(body.url, resolver=request.app[guard_key], allow_private=allow_private)
    except UnsafeDestination as exc:
        raise errors.ValidationFailed(
            "the webhook URL is not allowed",
            errors=[{"loc": ["url"], "msg": str(exc), "type": "unsafe_url"}],
        ) from exc
    async with request.app[sessionmaker_key].begin() as session:
        created = await service.create_subscription(
            session, principal=principal, request=body, at=utcnow(), request_id=request_id(request)
        )
    return json_response(
        {**service.subscription_view(created.subscription, _public_key(request)), "secret": created.secret},
        status=201,
        headers={"Location": f"/v1/webhooks/{created.subscription.id}"},
    )


@routes.get("/v1/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    """The caller's subscriptions."""
    principal = require_scope(request, SCOPE)
    async with request.app[sessionmaker_key]() as session:
        subscriptions = await service.list_subscriptions(session, principal=principal)
    public_key = _public_key(request)
    return json_response({"webhooks": [service.subscription_view(one, public_key) for one in subscriptions]})


@routes.get("/v1/webhooks/{webhook_id}")
async def get_webhook(request: web.Request) -> web.Response:
    """One subscription: its endpoint, event types, and whether (and why not) it is enabled."""
    principal = require_scope(request, SCOPE)
    async with request.app[sessionmaker_key]() as session:
        subscription = await service.get_subscription(
            session, principal=principal, subscription_id=request.match_info["webhook_id"]
        )
    return json_response(service.subscription_view(subscription, _public_key(request)))


@routes.delete("/v1/webhooks/{webhook_id}")
async def delete_webhook(request: web.Request) -> web.Response:
    """Stop delivering to an endpoint; waiting deliveries are cancelled, the history is kept."""
    principal = require_scope(request, SCOPE)
    async with request.app[sessionmaker_key].begin() as session:
        await service.delete_subscription(
            session,
            principal=principal,
            subscription_id=request.match_info["webhook_id"],
            at=utcnow(),
            request_id=request_id(request),
        )
    return web.Response(status=204)


@routes.get("/v1/webhooks/{webhook_id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    """A subscription's deliveries, newest first, each with every attempt."""
    principal = require_scope(request, SCOPE)
    state = request.query.get("state")
    if state is not None and state not in service.DeliveryState.ALL:
        raise errors.BadRequest(f"state must be one of: {', '.join(service.DeliveryState.ALL)}")
    limit_raw = request.query.get("limit", str(DEFAULT_PAGE_SIZE))
    if not limit_raw.isascii() or not limit_raw.isdigit() or not 1 <= int(limit_raw) <= service.MAX_PAGE_SIZE:
        raise errors.BadRequest(f"limit must be 1 to {service.MAX_PAGE_SIZE}")
    before = request.query.get("before")
    if before is not None and len(before) != 36:
        raise errors.BadRequest("before must be a delivery id from a previous page")
    async with request.app[sessionmaker_key]() as session:
        page, attempts, next_before = await service.list_deliveries(
            session,
            principal=principal,
            subscription_id=request.match_info["webhook_id"],
            state=state,
            before=before,
            limit=int(limit_raw),
        )
    return json_response(
        {
            "deliveries": [service.delivery_view(delivery, attempts[delivery.id]) for delivery in page],
            "next": next_before,
        }
    )


async def _delivery_with_attempts(request: web.Request, delivery_id: str) -> dict[str, Any]:
    async with request.app[sessionmaker_key]() as session:
        delivery = await session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        attempts = (
            await session.execute(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.number)
            )
        ).scalars()
        return service.delivery_view(delivery, list(attempts))


@routes.post("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
async def retry_delivery(request: web.Request) -> web.Response:
    """Send a finished delivery again now (same ``webhook-id``), with a fresh retry schedule."""
    principal = require_scope(request, SCOPE)
    async with request.app[sessionmaker_key].begin() as session:
        delivery = await service.retry_delivery(
            session,
            principal=principal,
            subscription_id=request.match_info["webhook_id"],
            delivery_id=request.match_info["delivery_id"],
            at=utcnow(),
        )
    request.app[notifier_key].wake(())
    return json_response(await _delivery_with_attempts(request, delivery.id), status=202)


@routes.post("/v1/webhooks/{webhook_id}/ping")
async def ping_webhook(request: web.Request) -> web.Response:
    """Send a signed ``webhook.ping`` now and answer with the attempt (no retries)."""
    principal = require_scope(request, SCOPE)
    settings = request.app[settings_key]
    now = utcnow()
    async with request.app[sessionmaker_key].begin() as session:
        subscription = await service.get_subscription(
            session, principal=principal, subscription_id=request.match_info["webhook_id"]
        )
        if subscription.disabled_at is not None:
            raise errors.Conflict(f"the subscription is disabled: {subscription.disabled_reason}")
        message_id = new_id()
        body = {
            "type": service.PING,
            "id": message_id,
            "created_at": isoformat(now),
            "data": {"webhook_id": subscription.id},
        }
        delivery = WebhookDelivery(
            id=new_id(),
            subscription_id=subscription.id,
            message_id=message_id,
            event_type=service.PING,
            referral_id=None,
            payload=json.dumps(body, separators=(",", ":")),
            state=service.DeliveryState.PENDING,
            attempts=0,
            schedule_start=0,
            next_attempt_at=None,
            last_status_code=None,
            last_error=None,
            created_at=now,
            completed_at=None,
        )
        session.add(delivery)
        await session.flush()
        (claimed,) = await claim(
            session, [(delivery, subscription)], now=now, lease=settings.webhook_lease_seconds
        )
    await attempt(request.app, claimed)
    return json_response(await _delivery_with_attempts(request, delivery.id))
