"""Webhook subscriptions, one delivery per (subscription, event), and every attempt of each delivery."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from referral.core.db import Base


class WebhookSubscription(Base):
    """A party's endpoint for some event types; ``cursor`` is the last of its events fanned out to it."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    party_id: Mapped[str] = mapped_column(String(36), ForeignKey("parties.id", ondelete="RESTRICT"))
    url: Mapped[str] = mapped_column(String(2048))
    # Event types delivered; all of them when empty.
    event_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(256))
    # The Standard Webhooks secret (``whsec_...``): the HMAC key, so it is kept, and shown only once.
    secret: Mapped[str] = mapped_column(String(128))
    cursor: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    created_by_client: Mapped[str] = mapped_column(String(64))
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(512))
    deleted_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_webhook_subscriptions_party_id", "party_id"),)


class WebhookDelivery(Base):
    """One message to one subscription, sent until it succeeds or its retries are exhausted.

    ``message_id`` is the ``webhook-id`` of every attempt (the event id; a fresh id for a ping), so receivers
    can recognise a repeat. While an attempt is in flight ``next_attempt_at`` is its lease: a worker that dies
    mid-attempt leaves the delivery due again once the lease has run out.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhook_subscriptions.id", ondelete="RESTRICT")
    )
    message_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    referral_id: Mapped[str | None] = mapped_column(String(36))
    payload: Mapped[str] = mapped_column(Text)
    # pending (waiting or in flight), succeeded, failed (retries exhausted, 410, or cancelled).
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    # The attempt count when the retry schedule (re)started: a manual retry starts it again.
    schedule_start: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint(
            "subscription_id", "message_id", name="uq_webhook_deliveries_subscription_id_message_id"
        ),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_subscription_id_id", "subscription_id", "id"),
    )


class WebhookAttempt(Base):
    """One POST of a delivery: when, the answer (or the error), and how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhook_deliveries.id", ondelete="RESTRICT")
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(512))

    __table_args__ = (
        UniqueConstraint("delivery_id", "number", name="uq_webhook_attempts_delivery_id_number"),
    )
