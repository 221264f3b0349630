"""Referrals (and removal orders and preservation requests), their items, status history and links.

The signed documents are stored verbatim (``jws``) next to the parsed fields, so any party can re-verify
them later; the parsed fields exist for queries and are never the source of truth.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from referral.core.db import Base

# What statistics read of a referral besides the party and the time of receipt (``reporting.queries``).
STATS_COLUMNS: Final = (
    "type",
    "category",
    "status",
    "acknowledged_at",
    "decided_at",
    "deadline",
    "preserved_until",
    "id",
)


class Referral(Base):
    """One referral, removal order or preservation request, as received and as it stands now."""

    __tablename__ = "referrals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    issuer_id: Mapped[str] = mapped_column(String(36), ForeignKey("parties.id", ondelete="RESTRICT"))
    addressee_id: Mapped[str] = mapped_column(String(36), ForeignKey("parties.id", ondelete="RESTRICT"))
    jti: Mapped[str] = mapped_column(String(128))
    kid: Mapped[str] = mapped_column(String(128))
    jws: Mapped[str] = mapped_column(Text)
    jws_sha256: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    category: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime]
    deadline: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    # When the provider decided (action_taken, partially_actioned or no_action): time to action.
    decided_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    preserved_until: Mapped[datetime | None]
    # When the clock emitted referral.overdue (once per referral).
    overdue_notified_at: Mapped[datetime | None]
    # The preserved_until that preservation.expiring was emitted for (an extension warns again).
    expiry_warned_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    audit_entry_id: Mapped[str] = mapped_column(String(36))
    receipt: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("issuer_id", "jti", name="uq_referrals_issuer_id_jti"),
        Index("ix_referrals_issuer_id_id", "issuer_id", "id"),
        Index("ix_referrals_addressee_id_id", "addressee_id", "id"),
        Index("ix_referrals_status_deadline", "status", "deadline"),
        Index("ix_referrals_received_at", "received_at"),
        # Statistics and transparency reports of one party over a period, index-only on PostgreSQL.
        Index(
            "ix_referrals_issuer_id_received_at",
            "issuer_id",
            "received_at",
            postgresql_include=["addressee_id", *STATS_COLUMNS],
        ),
        Index(
            "ix_referrals_addressee_id_received_at",
            "addressee_id",
            "received_at",
            postgresql_include=["issuer_id", *STATS_COLUMNS],
        ),
    )


class ReferralItem(Base):
    """One item of a referral, kept apart for de-confliction look-ups by URL and content hash."""

    __tablename__ = "referral_items"

    referral_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("referrals.id", ondelete="RESTRICT"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    addressee_id: Mapped[str] = mapped_column(String(36))
    url: Mapped[str | None] = mapped_column(String(2048))
    account: Mapped[str | None] = mapped_column(String(256))
    content_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_referral_items_addressee_id_url", "addressee_id", "url"),
        Index("ix_referral_items_addressee_id_content_sha256", "addressee_id", "content_sha256"),
    )


class ReferralStatus(Base):
    """One entry of a referral's status history: a signed status, or one the service recorded itself."""

    __tablename__ = "referral_statuses"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    referral_id: Mapped[str] = mapped_column(String(36), ForeignKey("referrals.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str] = mapped_column(String(32))
    # Null for statuses the service records itself (delivered, expired).
    actor_party_id: Mapped[str | None] = mapped_column(String(36))
    jti: Mapped[str | None] = mapped_column(String(128))
    jws: Mapped[str | None] = mapped_column(Text)
    jws_sha256: Mapped[str | None] = mapped_column(String(64))
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    recorded_at: Mapped[datetime]
    audit_entry_id: Mapped[str] = mapped_column(String(36))
    receipt: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("actor_party_id", "jti", name="uq_referral_statuses_actor_party_id_jti"),
        Index("ix_referral_statuses_referral_id_recorded_at", "referral_id", "recorded_at"),
        # The statistics' set of preservations ever extended, read once per read from this small index
        # rather than from the whole history.
        Index(
            "ix_referral_statuses_extended",
            "referral_id",
            postgresql_where=text("status = 'preservation_extended'"),
            sqlite_where=text("status = 'preservation_extended'"),
        ),
    )


class ReferralLink(Base):
    """De-confliction: two open referrals to the same provider that cover the same URL or content."""

    __tablename__ = "referral_links"

    referral_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("referrals.id", ondelete="RESTRICT"), primary_key=True
    )
    related_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("referrals.id", ondelete="RESTRICT"), primary_key=True
    )
    created_at: Mapped[datetime]
