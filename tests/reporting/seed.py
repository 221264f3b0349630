"""Seeding referrals with a history in the past, through the referral service with real signed documents.

The HTTP API stamps every document with the time it arrives; statistics need requests received over months.
So the seed calls the same service functions the routes call (verification, lifecycle, clocks, audit,
receipts), with ``received_at`` chosen by the test. Parties get a signing key valid from long ago.

A ``Case`` is a request and the statuses that followed it; ``expected`` helpers in the tests compute the
figures from the cases alone, without the database.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from referral.auth.principal import SCOPES_BY_KIND, PartyKind, Principal
from referral.core.appkeys import sessionmaker_key
from referral.parties import service as parties
from referral.parties.service import Actor
from referral.referrals import service as referrals
from referral.referrals.clock import expire_preservations
from referral.referrals.routes import receipt_signer_key
from tests.auth.factories import TestParty, make_party, new_key, public_jwk, sign_document
from tests.referrals.test_api import example, status_claims

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
ITEM_COUNTS = {"referral": 2, "removal_order": 3, "preservation_request": 2}


@dataclass(frozen=True)
class Step:
    """A status set ``after`` the request was received (``preserved_until`` relative to now, if any)."""

    status: str
    after: timedelta
    preserved_for: timedelta | None = None
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """One request and its history."""

    issuer: TestParty
    addressee: TestParty
    kind: str
    received_at: datetime
    steps: list[Step] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    referral_id: str = ""


async def backdated_party(client: TestClient[Any, Any], *, kind: str, country: str, name: str) -> TestParty:
    """A party (with an API client, via the auth factory) whose signing key was valid since 2000."""
    party = await make_party(client, kind=kind, country=country, name=name)
    signing_key = new_key()
    app = _app(client)
    async with app[sessionmaker_key].begin() as session:
        key = await parties.add_key(
            session,
            party_id=party.party_id,
            jwk=public_jwk(signing_key),
            not_before=LONG_AGO,
            not_after=None,
            actor=Actor(),
        )
    return dataclasses.replace(party, signing_key=signing_key, signing_kid=key.kid)


def _app(client: TestClient[Any, Any]) -> web.Application:
    app = client.server.app
    assert app is not None
    return app


def principal_of(party: TestParty) -> Principal:
    """The principal the party's API client would have."""
    kind = PartyKind(party.kind)
    return Principal(
        party_id=party.party_id,
        party_kind=kind,
        client_id=party.client_id,
        scopes=SCOPES_BY_KIND[kind],
        token_id=uuid.uuid4().hex,
    )


def _claims(case: Case) -> dict[str, Any]:
    claims = example(case.kind)
    claims.update(
        iss=case.issuer.party_id,
        addressee=case.addressee.party_id,
        iat=int(case.received_at.timestamp()),
        jti=uuid.uuid4().hex,
    )
    claims.pop("deadline", None)
    claims.pop("confidentiality", None)
    if not case.urls:
        case.urls = [f"https://content.example/{uuid.uuid4().hex}" for _ in range(ITEM_COUNTS[case.kind])]
    items = []
    for original, url in zip(claims["items"], case.urls, strict=True):
        item = {
            name: value
            for name, value in original.items()
            if name not in ("content_sha256", "perceptual_hash")
        }
        item["url"] = url
        items.append(item)
    claims["items"] = items
    return claims


async def seed(client: TestClient[Any, Any], cases: list[Case], *, now: datetime) -> None:
    """Submit every case and record its statuses at their times; then let lapsed preservations expire."""
    app = _app(client)
    receipts = app[receipt_signer_key]
    for case in sorted(cases, key=lambda case: case.received_at):
        async with app[sessionmaker_key].begin() as session:
            submission = await referrals.submit_referral(
                session,
                principal=principal_of(case.issuer),
                compact=sign_document(case.issuer, _claims(case)),
                received_at=case.received_at,
                receipts=receipts,
                request_id="seed",
            )
        case.referral_id = submission.referral.id
        for step in case.steps:
            at = case.received_at + step.after
            signer = case.issuer if step.status in ("withdrawn", "info_provided") else case.addressee
            claims = status_claims(
                signer, case.referral_id, step.status, iat=int(at.timestamp()), **step.changes
            )
            claims.pop("effective_at", None)
            if step.status == "action_taken" and "items" not in step.changes:
                # Every item removed, so the tests know each item's outcome.
                claims["items"] = [{"index": index, "outcome": "removed"} for index in range(len(case.urls))]
            if step.preserved_for is not None:
                claims["preserved_until"] = (now + step.preserved_for).isoformat()
            async with app[sessionmaker_key].begin() as session:
                await referrals.record_status(
                    session,
                    principal=principal_of(signer),
                    referral_id=case.referral_id,
                    compact=sign_document(signer, claims, typ="status+jws"),
                    received_at=at,
                    receipts=receipts,
                    request_id="seed",
                )
    async with app[sessionmaker_key].begin() as session:
        await expire_preservations(session, now=now)
