"""The delivery worker: outbox events → signed POSTs, with retries, leases and a record of every attempt.

One round is: fan out new events to the subscriptions that want them (one transaction), claim due deliveries
(one transaction: each gets a lease and an open attempt row), POST them with no transaction open, and record
each outcome in a transaction of its own. On PostgreSQL several workers share the work with
``FOR UPDATE SKIP LOCKED``; the lease keeps a claimed delivery from being sent twice at once, and if its
worker dies mid-attempt the lease runs out and the delivery is sent again with the same ``webhook-id``
(at-least-once).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver
from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from referral.config import Settings
from referral.core.appkeys import service_keys_key, sessionmaker_key, settings_key
from referral.core.background import background_task, pause
from referral.core.ids import new_id
from referral.core.timeutil import utcnow
from referral.feed.models import EventCursor, OutboxEvent
from referral.feed.notifier import notifier_key
from referral.feed.outbox import EventType
from referral.feed.service import event_body
from referral.referrals.service import deliver_documents
from referral.webhooks import signing
from referral.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from referral.webhooks.service import PING, SUBSCRIPTIONS_CHANGED, DeliveryState, disable_subscription
from referral.webhooks.ssrf import GuardedResolver, UnsafeDestination, check_url

log = structlog.get_logger("referral.webhooks.delivery")
WAKE_COALESCE_SECONDS = 0.1

_deliveries = cast(Table, WebhookDelivery.__table__)
_attempts = cast(Table, WebhookAttempt.__table__)

FAN_OUT_SUBSCRIPTIONS = 100
FAN_OUT_EVENTS = 500
MAX_RETRY_AFTER_SECONDS = 24 * 3600
USER_AGENT = "referral-webhooks/1 (+https://www.standardwebhooks.com)"

http_key = web.AppKey("webhook_http_key", aiohttp.ClientSession)
guard_key = web.AppKey("webhook_guard_key", GuardedResolver)
resolver_key = web.AppKey("webhook_resolver_key", AbstractResolver)
"""Optional: the DNS resolver behind the SSRF guard (tests put a fake one here before startup)."""


def _locking(session: AsyncSession, query: Any, *of: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=of or None)
    return query


async def fan_out(session: AsyncSession, *, now: datetime) -> int:
    """Create deliveries for events committed since each subscription's cursor; returns how many."""
    subscriptions = list(
        (
            await session.execute(
                _locking(
                    session,
                    select(WebhookSubscription)
                    .join(EventCursor, EventCursor.party_id == WebhookSubscription.party_id)
                    .where(
                        WebhookSubscription.disabled_at.is_(None),
                        EventCursor.last_cursor > WebhookSubscription.cursor,
                    )
                    .order_by(WebhookSubscription.id)
                    .limit(FAN_OUT_SUBSCRIPTIONS),
                    WebhookSubscription,
                )
            )
        ).scalars()
    )
    created = 0
    for subscription in subscriptions:
        events = list(
            (
                await session.execute(
                    select(OutboxEvent)
                    .where(
                        OutboxEvent.recipient_id == subscription.party_id,
                        OutboxEvent.cursor > subscription.cursor,
                    )
                    .order_by(OutboxEvent.cursor)
                    .limit(FAN_OUT_EVENTS)
                )
            ).scalars()
        )
        if not events:
            continue
        wanted = set(subscription.event_types)
        rows = [
            {
                "id": new_id(),
                "subscription_id": subscription.id,
                "message_id": event.id,
                "event_type": event.type,
                "referral_id": event.referral_id,
                "payload": json.dumps(event_body(event), separators=(",", ":"), ensure_ascii=False),
                "state": DeliveryState.PENDING,
                "attempts": 0,
                "schedule_start": 0,
                "next_attempt_at": now,
                "last_status_code": None,
                "last_error": None,
                "created_at": now,
                "completed_at": None,
            }
            for event in events
            if not wanted or event.type in wanted
        ]
        if rows:
            await session.execute(insert(_deliveries), rows)
            created += len(rows)
        await session.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.id == subscription.id)
            .values(cursor=events[-1].cursor)
        )
    return created


@dataclass(frozen=True)
class Claimed:
    """A delivery taken by this worker for one attempt, with what the attempt needs."""

    delivery_id: str
    attempt_id: str
    number: int
    message_id: str
    event_type: str
    referral_id: str | None
    payload: str
    subscription_id: str
    party_id: str
    url: str
    secret: str


async def claim(
    session: AsyncSession,
    deliveries: list[tuple[WebhookDelivery, WebhookSubscription]],
    *,
    now: datetime,
    lease: float,
) -> list[Claimed]:
    """Lease the deliveries and open one attempt row each (closing any attempt a dead worker left open)."""
    if not deliveries:
        return []
    ids = [delivery.id for delivery, _subscription in deliveries]
    await session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(ids), WebhookAttempt.finished_at.is_(None))
        .values(finished_at=now, error="no outcome recorded: the worker stopped during the attempt")
    )
    claimed = []
    for delivery, subscription in deliveries:
        number = delivery.attempts + 1
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id)
            .values(attempts=number, next_attempt_at=now + timedelta(seconds=lease))
        )
        claimed.append(
            Claimed(
                delivery_id=delivery.id,
                attempt_id=new_id(),
                number=number,
                message_id=delivery.message_id,
                event_type=delivery.event_type,
                referral_id=delivery.referral_id,
                payload=delivery.payload,
                subscription_id=subscription.id,
                party_id=subscription.party_id,
                url=subscription.url,
                secret=subscription.secret,
            )
        )
    await session.execute(
        insert(_attempts),
        [
            {
                "id": one.attempt_id,
                "delivery_id": one.delivery_id,
                "number": one.number,
                "started_at": now,
                "finished_at": None,
                "status_code": None,
                "latency_ms": None,
                "error": None,
            }
            for one in claimed
        ],
    )
    return claimed


async def claim_due(session: AsyncSession, *, now: datetime, limit: int, lease: float) -> list[Claimed]:
    """Claim up to ``limit`` deliveries whose time has come (skipping those another worker holds)."""
    due = list(
        await session.execute(
            _locking(
                session,
                select(WebhookDelivery, WebhookSubscription)
                .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
                .where(
                    WebhookDelivery.state == DeliveryState.PENDING,
                    WebhookDelivery.next_attempt_at <= now,
                    WebhookSubscription.disabled_at.is_(None),
                )
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(limit),
                WebhookDelivery,
            )
        )
    )
    return await claim(session, [(row[0], row[1]) for row in due], now=now, lease=lease)


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code, or an error; how long it took; the endpoint's Retry-After."""

    status_code: int | None
    error: str | None
    latency_ms: int
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - utcnow()).total_seconds())


def _connection_error(exc: aiohttp.ClientConnectorError) -> str:
    cause = exc.os_error
    if isinstance(cause, UnsafeDestination):
        return f"refused: {cause}"
    return f"connection failed: {cause.strerror or type(cause).__name__}"


async def send(
    http: aiohttp.ClientSession, claimed: Claimed, *, service_keys: Any, settings: Settings
) -> Outcome:
    """POST one attempt with the Standard Webhooks headers; never raises, never follows a redirect."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def elapsed() -> int:
        return int((loop.time() - started) * 1000)

    try:
        check_url(claimed.url, allow_private=settings.webhook_allow_private)
    except UnsafeDestination as exc:
        return Outcome(None, f"refused: {exc}", elapsed())
    body = claimed.payload.encode()
    headers = signing.headers(
        secret=claimed.secret,
        private_key=service_keys.active.private_key,
        message_id=claimed.message_id,
        timestamp=int(time.time()),
        body=body,
    )
    headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
    try:
        async with http.post(
            claimed.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
        ) as response:
            status = response.status
            retry_after = _retry_after(response.headers.get("Retry-After"))
    except aiohttp.ClientConnectorError as exc:
        return Outcome(None, _connection_error(exc), elapsed())
    except TimeoutError:
        return Outcome(None, f"no answer within {settings.webhook_timeout_seconds:g} s", elapsed())
    except aiohttp.ClientError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:512], elapsed())
    error = None
    if 300 <= status < 400:
        error = "redirects are not followed; register the final URL"
    elif not 200 <= status < 300:
        error = f"the endpoint answered {status}"
    return Outcome(status, error, elapsed(), retry_after)


def _next_delay(settings: Settings, delivery: WebhookDelivery, outcome: Outcome) -> float | None:
    """Seconds until the next attempt, or None when the schedule is exhausted."""
    position = delivery.attempts - delivery.schedule_start
    delays = settings.webhook_retry_delays
    if delivery.event_type == PING or position > len(delays):
        return None
    delay = delays[position - 1]
    if outcome.retry_after is not None:
        delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


async def record(
    session: AsyncSession, claimed: Claimed, outcome: Outcome, *, now: datetime, settings: Settings
) -> None:
    """Record an attempt and move its delivery on: succeeded, retried later, or failed."""
    await session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.id == claimed.attempt_id)
        .values(
            finished_at=now,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
        )
    )
    delivery = (
        await session.execute(
            select(WebhookDelivery).where(WebhookDelivery.id == claimed.delivery_id).with_for_update()
        )
    ).scalar_one()
    if delivery.state != DeliveryState.PENDING or delivery.attempts != claimed.number:
        return  # cancelled meanwhile, or our lease ran out and another attempt has begun: that one decides
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error
    if outcome.succeeded:
        delivery.state = DeliveryState.SUCCEEDED
        delivery.next_attempt_at = None
        delivery.completed_at = now
        if claimed.event_type == EventType.REFERRAL_SUBMITTED.value and claimed.referral_id is not None:
            await deliver_documents(
                session,
                provider_id=claimed.party_id,
                referral_ids=[claimed.referral_id],
                at=now,
                request_id=None,
                reader=None,
            )
        return
    subscription = await session.get(WebhookSubscription, claimed.subscription_id, with_for_update=True)
    assert subscription is not None
    if outcome.status_code == 410:
        delivery.state, delivery.next_attempt_at, delivery.completed_at = DeliveryState.FAILED, None, now
        await disable_subscription(
            session, subscription=subscription, at=now, reason="the endpoint answered 410 Gone"
        )
        return
    delay = _next_delay(settings, delivery, outcome)
    if delay is not None:
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        return
    delivery.state, delivery.next_attempt_at, delivery.completed_at = DeliveryState.FAILED, None, now
    if delivery.event_type != PING:
        await disable_subscription(
            session,
            subscription=subscription,
            at=now,
            reason=f"delivery {delivery.id} failed {delivery.attempts} attempts; the last: {outcome.error}",
        )


async def attempt(app: web.Application, claimed: Claimed) -> Outcome:
    """Send one claimed attempt and record its outcome (a transaction of its own, after the POST)."""
    settings = app[settings_key]
    outcome = await send(app[http_key], claimed, service_keys=app[service_keys_key], settings=settings)
    try:
        async with app[sessionmaker_key].begin() as session:
            await record(session, claimed, outcome, now=utcnow(), settings=settings)
    except (OperationalError, DBAPIError, PoolTimeoutError, OSError) as exc:
        # Unrecorded, the delivery is sent again when its lease runs out: at least once, never lost.
        log.warning("webhook_record_failed", delivery_id=claimed.delivery_id, error=type(exc).__name__)
        return outcome
    log.info(
        "webhook_attempted",
        delivery_id=claimed.delivery_id,
        attempt=claimed.number,
        status_code=outcome.status_code,
        latency_ms=outcome.latency_ms,
        error=outcome.error,
    )
    return outcome


async def webhooks_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the HTTP client of deliveries, resolving through the SSRF guard (no proxies from env)."""
    settings = app[settings_key]
    guard = GuardedResolver(
        app.get(resolver_key) or aiohttp.ThreadedResolver(), allow_private=settings.webhook_allow_private
    )
    connector = aiohttp.TCPConnector(
        resolver=guard, use_dns_cache=False, limit=settings.webhook_concurrency * 2
    )
    try:
        async with aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False) as http:
            app[guard_key] = guard
            app[http_key] = http
            yield
    finally:
        await guard.close()


_ANY_ENABLED = select(WebhookSubscription.id).where(WebhookSubscription.disabled_at.is_(None)).limit(1)


class EnabledSubscriptions:
    """Whether any subscription is enabled: re-read when one is created, and every ``recheck`` seconds.

    Without one, nothing can be fanned out or fall due, and a round would be two transactions for nothing on
    every commit that wakes the loop. Creating a subscription sets ``changed`` after its commit, in this
    process directly and in others by NOTIFY; ``recheck`` bounds how long one written some other way (or on
    SQLite by another process, which no wake-up reaches) goes unseen: as long as polling would have taken.
    """

    def __init__(self, changed: asyncio.Event, *, recheck: float) -> None:
        """Read on first use; afterwards when ``changed`` is set or ``recheck`` seconds have passed."""
        self._changed = changed
        self._recheck = recheck
        self._next_read = -math.inf
        self._exist = True

    async def exist(self, app: web.Application) -> bool:
        """Whether a round can find work (``True`` also means: could not tell)."""
        now = time.monotonic()
        if self._changed.is_set() or now >= self._next_read:
            # Cleared before the read: a subscription committed while it runs sets it again.
            self._changed.clear()
            try:
                async with app[sessionmaker_key]() as session:
                    self._exist = (await session.execute(_ANY_ENABLED)).first() is not None
            except BaseException:
                self._changed.set()
                raise
            self._next_read = now + self._recheck
        return self._exist


async def deliver_round(app: web.Application, *, limit: int) -> list[Claimed]:
    """Fan out new events and claim up to ``limit`` due deliveries."""
    settings = app[settings_key]
    async with app[sessionmaker_key].begin() as session:
        await fan_out(session, now=utcnow())
    async with app[sessionmaker_key].begin() as session:
        return await claim_due(session, now=utcnow(), limit=limit, lease=settings.webhook_lease_seconds)


async def _run(app: web.Application, stopping: asyncio.Event) -> None:
    settings = app[settings_key]
    in_flight: set[asyncio.Task[Outcome]] = set()
    notifier = app[notifier_key]
    try:
        with notifier.listen() as woken, notifier.listen(SUBSCRIPTIONS_CHANGED) as changed:
            subscriptions = EnabledSubscriptions(changed, recheck=settings.webhook_poll_interval_seconds)
            while not stopping.is_set():
                woken.clear()
                free = settings.webhook_concurrency - len(in_flight)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        if await subscriptions.exist(app):
                            claimed = await deliver_round(app, limit=free)
                    except (OperationalError, DBAPIError, PoolTimeoutError, OSError) as exc:
                        log.warning("webhook_round_failed", error=type(exc).__name__)
                for one in claimed:
                    task = asyncio.create_task(attempt(app, one), name=f"webhook-{one.delivery_id}")
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)
                    continue
                await pause(stopping, settings.webhook_poll_interval_seconds, woken)
                if woken.is_set() and not stopping.is_set():
                    # Every commit wakes us; under load, one round per commit would be two transactions
                    # for each request. Gathering the commits of a few milliseconds costs that little.
                    await asyncio.sleep(WAKE_COALESCE_SECONDS)
    finally:
        # Shutting down: let attempts under way finish and be recorded (they are bounded by the timeout);
        # whatever is cut off is sent again when its lease runs out.
        if in_flight:
            _done, cut_off = await asyncio.wait(in_flight, timeout=settings.webhook_timeout_seconds + 1)
            for task in cut_off:
                task.cancel()
            await asyncio.gather(*cut_off, return_exceptions=True)


delivery_task = background_task("webhook-delivery", _run)
