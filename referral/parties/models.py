"""Parties, their public signing keys, their API clients and the client assertions already used."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from referral.core.db import Base

PARTY_KINDS = ("authority", "provider", "observer", "operator")


class Party(Base):
    """An authority, provider, observer or operator (DESIGN.md §3)."""

    __tablename__ = "parties"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    # ISO 3166-1 alpha-2.
    country: Mapped[str] = mapped_column(String(2))
    contact: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("kind IN ('authority', 'provider', 'observer', 'operator')", name="kind"),
    )


class PartyKey(Base):
    """A public signing key of a party; only the public JWK is ever stored."""

    __tablename__ = "party_keys"

    party_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("parties.id", ondelete="RESTRICT"), primary_key=True
    )
    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    not_before: Mapped[datetime]
    not_after: Mapped[datetime | None]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revocation_reason: Mapped[str | None] = mapped_column(String(500))


class ApiClient(Base):
    """A machine client of a party that authenticates with ``private_key_jwt`` under its own public key."""

    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    party_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("parties.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    kid: Mapped[str] = mapped_column(String(128))
    alg: Mapped[str] = mapped_column(String(16))
    jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    # A disabled client (its key revoked) gets no new tokens and its outstanding tokens stop working.
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(500))


class UsedClientAssertion(Base):
    """The ``jti`` of every accepted client assertion, kept until it expires, so none is accepted twice."""

    __tablename__ = "used_client_assertions"

    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("api_clients.id", ondelete="CASCADE"), primary_key=True
    )
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_used_client_assertions_expires_at", "expires_at"),)
