"""Referral use cases: submit, read (with delivery), list, record statuses. Callers own the transaction."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referral.audit.service import append_entry
from referral.auth.principal import PartyKind, Principal
from referral.core import errors
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, isoformat_or_none
from referral.feed.outbox import emit
from referral.parties.keys import signing_key
from referral.parties.models import Party
from referral.referrals import events, lifecycle
from referral.referrals.documents import (
    DocumentType,
    ReferralDocument,
    Status,
    StatusDocument,
    deadline_for,
    outcome_problems,
    preservation_expires_at,
)
from referral.referrals.models import Referral, ReferralItem, ReferralLink, ReferralStatus
from referral.referrals.signed import (
    REFERRAL_TYP,
    STATUS_TYP,
    ReceiptSigner,
    UnverifiedDocument,
    parse_compact,
)

_referrals = cast(Table, Referral.__table__)
_items = cast(Table, ReferralItem.__table__)
_statuses = cast(Table, ReferralStatus.__table__)
_links = cast(Table, ReferralLink.__table__)

DECIDED_STATUSES = frozenset({Status.ACTION_TAKEN, Status.PARTIALLY_ACTIONED, Status.NO_ACTION})
MAX_PAGE_SIZE = 200


class DocumentConflict(errors.Conflict):
    """The same ``jti`` was used before for a different document."""

    slug = "jti-conflict"
    title = "Document id already used"


def validation_problem(exc: ValidationError, what: str) -> errors.ValidationFailed:
    """A 422 listing every invalid field of a signed payload (values are not echoed back)."""
    return errors.ValidationFailed(
        f"the {what} payload is invalid",
        errors=[
            {"loc": ["payload", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_input=False)
        ],
    )


@dataclass(frozen=True)
class Submission:
    """A stored referral and whether this request created it (False for an idempotent repeat)."""

    referral: Referral
    created: bool


async def _verified(
    session: AsyncSession, *, document: UnverifiedDocument, principal: Principal, at: datetime
) -> None:
    issuer = document.claims.get("iss")
    if issuer != principal.party_id:
        raise errors.Forbidden("the document's iss must be the calling party's id")
    key = await signing_key(session, party_id=principal.party_id, kid=document.kid, at=at)
    key.verify_compact(document.compact)


async def submit_referral(
    session: AsyncSession,
    *,
    principal: Principal,
    compact: str,
    received_at: datetime,
    receipts: ReceiptSigner,
    request_id: str,
) -> Submission:
    """Verify a signed referral, store it verbatim with its items, audit it, and sign its receipt."""
    if principal.party_kind is not PartyKind.AUTHORITY:
        raise errors.Forbidden("only authorities submit referrals")
    unverified = parse_compact(compact, typ=REFERRAL_TYP)
    await _verified(session, document=unverified, principal=principal, at=received_at)
    try:
        document = ReferralDocument.model_validate(unverified.claims)
    except ValidationError as exc:
        raise validation_problem(exc, "referral") from exc

    existing = (
        await session.execute(
            select(Referral).where(Referral.issuer_id == principal.party_id, Referral.jti == document.jti)
        )
    ).scalar_one_or_none()
    if existing is not None:
        if existing.jws_sha256 != unverified.sha256:
            raise DocumentConflict(f"jti {document.jti!r} was already used for another document")
        return Submission(existing, created=False)

    addressee = await session.get(Party, document.addressee)
    if addressee is None or addressee.kind != PartyKind.PROVIDER:
        raise errors.ValidationFailed(
            "the addressee is not a registered provider",
            errors=[
                {"loc": ["payload", "addressee"], "msg": "no provider with this id", "type": "addressee"}
            ],
        )

    referral_id = new_id()
    deadline = deadline_for(document, received_at)
    preserved_until = preservation_expires_at(document, received_at)
    entry = await append_entry(
        session,
        action="referral.submitted",
        subject_type="referral",
        subject_id=referral_id,
        actor_party=principal.party_id,
        actor_client=principal.client_id,
        request_id=request_id,
        digest=unverified.sha256,
        visible_to=[principal.party_id, addressee.id],
    )
    receipt = receipts.sign(
        {
            "referral_id": referral_id,
            "jws_sha256": unverified.sha256,
            "received_at": isoformat(received_at),
            "deadline": isoformat_or_none(deadline),
            "audit_entry_id": entry.id,
        }
    )
    values: dict[str, Any] = {
        "id": referral_id,
        "type": document.type.value,
        "issuer_id": principal.party_id,
        "addressee_id": addressee.id,
        "jti": document.jti,
        "kid": unverified.kid,
        "jws": unverified.compact,
        "jws_sha256": unverified.sha256,
        "document": document.model_dump(mode="json", exclude_none=True),
        "category": document.category.value,
        "item_count": len(document.items),
        "status": Status.SUBMITTED.value,
        "received_at": received_at,
        "deadline": deadline,
        "delivered_at": None,
        "acknowledged_at": None,
        "decided_at": None,
        "closed_at": None,
        "preserved_until": preserved_until,
        "overdue_notified_at": None,
        "expiry_warned_until": None,
        "updated_at": received_at,
        "audit_entry_id": entry.id,
        "receipt": receipt,
    }
    await session.execute(insert(_referrals).values(**values))
    await session.execute(
        insert(_items),
        [
            {
                "referral_id": referral_id,
                "position": position,
                "addressee_id": addressee.id,
                "url": item.url,
                "account": item.account,
                "content_sha256": item.content_sha256,
            }
            for position, item in enumerate(document.items)
        ],
    )
    related = await _link_overlapping(session, referral_id=referral_id, document=document, at=received_at)
    referral = Referral(**values)
    emit(session, events.submitted(referral, received_at))
    emit(session, events.related(referral, related, received_at))
    return Submission(referral, created=True)


async def _link_overlapping(
    session: AsyncSession, *, referral_id: str, document: ReferralDocument, at: datetime
) -> list[tuple[str, str]]:
    """De-confliction: link open referrals to the same provider that cover the same URL or content hash;
    returns the ``(id, issuer_id)`` of each."""
    urls = sorted({item.url for item in document.items if item.url})
    hashes = sorted({item.content_sha256 for item in document.items if item.content_sha256})
    if not urls and not hashes:
        return []
    matches = []
    if urls:
        matches.append(ReferralItem.url.in_(urls))
    if hashes:
        matches.append(ReferralItem.content_sha256.in_(hashes))
    related = list(
        await session.execute(
            select(ReferralItem.referral_id, Referral.issuer_id)
            .join(Referral, Referral.id == ReferralItem.referral_id)
            .where(
                ReferralItem.addressee_id == document.addressee,
                ReferralItem.referral_id != referral_id,
                or_(*matches),
                Referral.status.in_([status.value for status in lifecycle.OPEN_STATUSES]),
            )
            .distinct()
        )
    )
    rows = [
        link
        for other, _issuer in related
        for link in (
            {"referral_id": referral_id, "related_id": other, "created_at": at},
            {"referral_id": other, "related_id": referral_id, "created_at": at},
        )
    ]
    if rows:
        await session.execute(insert(_links), rows)
    return [(other, issuer) for other, issuer in related]


def _visible(referral: Referral, principal: Principal) -> bool:
    if principal.party_kind is PartyKind.AUTHORITY:
        return referral.issuer_id == principal.party_id
    if principal.party_kind is PartyKind.PROVIDER:
        return referral.addressee_id == principal.party_id
    return False


async def get_visible(
    session: AsyncSession, *, principal: Principal, referral_id: str, for_update: bool = False
) -> Referral:
    """The referral if the caller issued it or is its addressee; 404 otherwise, whether or not it exists."""
    query = select(Referral).where(Referral.id == referral_id)
    if for_update:
        query = query.with_for_update()
    referral = (await session.execute(query)).scalar_one_or_none()
    if referral is None or not _visible(referral, principal):
        raise errors.NotFound("no referral with this id")
    return referral


async def record_server_status(
    session: AsyncSession, *, referral: Referral, status: Status, at: datetime, request_id: str | None
) -> ReferralStatus:
    """Record a status the service sets itself (delivered, expired) in the history and the audit log."""
    entry = await append_entry(
        session,
        action=f"referral.{status.value}",
        subject_type="referral",
        subject_id=referral.id,
        request_id=request_id,
        visible_to=[referral.issuer_id, referral.addressee_id],
    )
    values: dict[str, Any] = {
        "id": new_id(),
        "referral_id": referral.id,
        "status": status.value,
        "previous_status": referral.status,
        "actor_party_id": None,
        "jti": None,
        "jws": None,
        "jws_sha256": None,
        "document": None,
        "recorded_at": at,
        "audit_entry_id": entry.id,
        "receipt": None,
    }
    await session.execute(insert(_statuses).values(**values))
    return ReferralStatus(**values)


async def mark_delivered(
    session: AsyncSession, *, referral: Referral, at: datetime, request_id: str | None
) -> None:
    """Record delivery on the provider's first fetch (only ever once: guarded by the status in the UPDATE)."""
    changed = await session.execute(
        update(_referrals)
        .where(_referrals.c.id == referral.id, _referrals.c.status == Status.SUBMITTED.value)
        .values(status=Status.DELIVERED.value, delivered_at=at, updated_at=at)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        return
    status = await record_server_status(
        session, referral=referral, status=Status.DELIVERED, at=at, request_id=request_id
    )
    referral.status = Status.DELIVERED.value
    referral.delivered_at = at
    referral.updated_at = at
    emit(session, events.delivered(referral, status, at))


async def _audit_read(
    session: AsyncSession, *, referral: Referral, reader: Principal, request_id: str | None
) -> None:
    """A party read the referral's signed content: a sensitive read, in the audit log."""
    await append_entry(
        session,
        action="referral.read",
        subject_type="referral",
        subject_id=referral.id,
        actor_party=reader.party_id,
        actor_client=reader.client_id,
        request_id=request_id,
        digest=referral.jws_sha256,
        visible_to=[referral.issuer_id, referral.addressee_id],
    )


async def deliver_documents(
    session: AsyncSession,
    *,
    provider_id: str,
    referral_ids: Sequence[str],
    at: datetime,
    request_id: str | None,
    reader: Principal | None,
) -> None:
    """The provider received these referrals' signed documents in its feed (``reader`` is who read them, an
    audited read) or by a webhook it acknowledged (no reader): the first time, that is their delivery."""
    if not referral_ids:
        return
    received = (
        await session.execute(
            select(Referral)
            .where(Referral.id.in_(sorted(set(referral_ids))), Referral.addressee_id == provider_id)
            .order_by(Referral.id)
        )
    ).scalars()
    for referral in received:
        if referral.status == Status.SUBMITTED.value:
            await mark_delivered(session, referral=referral, at=at, request_id=request_id)
        if reader is not None:
            await _audit_read(session, referral=referral, reader=reader, request_id=request_id)


async def read_referral(
    session: AsyncSession, *, principal: Principal, referral_id: str, at: datetime, request_id: str
) -> tuple[Referral, list[ReferralStatus], list[tuple[str, bool]]]:
    """The referral with history and links; the read is audited, and a provider's first read delivers it."""
    referral = await get_visible(session, principal=principal, referral_id=referral_id)
    if principal.party_kind is PartyKind.PROVIDER and referral.status == Status.SUBMITTED.value:
        await mark_delivered(session, referral=referral, at=at, request_id=request_id)
    await _audit_read(session, referral=referral, reader=principal, request_id=request_id)
    history = list(
        (
            await session.execute(
                select(ReferralStatus)
                .where(ReferralStatus.referral_id == referral.id)
                .order_by(ReferralStatus.recorded_at, ReferralStatus.id)
            )
        ).scalars()
    )
    links = [
        (related_id, issuer_id == referral.issuer_id)
        for related_id, issuer_id in await session.execute(
            select(ReferralLink.related_id, Referral.issuer_id)
            .join(Referral, Referral.id == ReferralLink.related_id)
            .where(ReferralLink.referral_id == referral.id)
            .order_by(ReferralLink.related_id)
        )
    ]
    return referral, history, links


@dataclass(frozen=True)
class ListFilters:
    """Filters of the referral list."""

    type: DocumentType | None = None
    status: Status | None = None
    overdue: bool | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None


def overdue_condition(now: datetime) -> Any:
    """SQL condition: a deadline has passed and the provider has not decided (nor was it withdrawn)."""
    return and_(
        Referral.deadline.is_not(None),
        Referral.deadline < now,
        Referral.decided_at.is_(None),
        Referral.status.in_([status.value for status in lifecycle.OPEN_STATUSES]),
    )


def encode_cursor(referral_id: str) -> str:
    """An opaque cursor after ``referral_id``."""
    return base64.urlsafe_b64encode(referral_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The referral id a cursor points after; 400 for anything that is not one of ours."""
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BadRequest("invalid cursor") from exc
    if len(value) != 36:
        raise errors.BadRequest("invalid cursor")
    return value


async def list_referrals(
    session: AsyncSession,
    *,
    principal: Principal,
    filters: ListFilters,
    after: str | None,
    limit: int,
    now: datetime,
    request_id: str,
) -> tuple[list[Referral], str | None]:
    """A page of the caller's referrals, newest first; a provider's listing delivers what it lists."""
    query = _filtered(select(Referral).where(_tenant_condition(principal)), filters, now)
    if after is not None:
        query = query.where(Referral.id < after)
    page = list((await session.execute(query.order_by(Referral.id.desc()).limit(limit + 1))).scalars())
    more = len(page) > limit
    page = page[:limit]
    if principal.party_kind is PartyKind.PROVIDER:
        for referral in page:
            if referral.status == Status.SUBMITTED.value:
                await mark_delivered(session, referral=referral, at=now, request_id=request_id)
    return page, (encode_cursor(page[-1].id) if more and page else None)


def _tenant_condition(principal: Principal) -> Any:
    if principal.party_kind is PartyKind.AUTHORITY:
        return Referral.issuer_id == principal.party_id
    if principal.party_kind is PartyKind.PROVIDER:
        return Referral.addressee_id == principal.party_id
    raise errors.Forbidden("only authorities and providers list referrals")


def _filtered(query: Any, filters: ListFilters, now: datetime) -> Any:
    if filters.type is not None:
        query = query.where(Referral.type == filters.type.value)
    if filters.status is not None:
        query = query.where(Referral.status == filters.status.value)
    if filters.overdue is True:
        query = query.where(overdue_condition(now))
    elif filters.overdue is False:
        query = query.where(~overdue_condition(now))
    if filters.received_from is not None:
        query = query.where(Referral.received_at >= filters.received_from)
    if filters.received_to is not None:
        query = query.where(Referral.received_at < filters.received_to)
    return query


@dataclass(frozen=True)
class StatusRecorded:
    """A recorded status (or the original one again, for an idempotent repeat)."""

    referral: Referral
    status: ReferralStatus
    created: bool


def _clock_changes(referral: Referral, document: StatusDocument, at: datetime) -> dict[str, Any]:
    """The referral's new status and the clocks it starts or stops (acknowledgement, decision, closing)."""
    changes: dict[str, Any] = {"status": document.status.value, "updated_at": at}
    if document.status is Status.ACKNOWLEDGED and referral.acknowledged_at is None:
        changes["acknowledged_at"] = at
    if document.status in DECIDED_STATUSES and referral.decided_at is None:
        changes["decided_at"] = at
    if document.preserved_until is not None:
        changes["preserved_until"] = document.preserved_until
    if lifecycle.is_terminal(document.status):
        changes["closed_at"] = at
    return changes


def _actor(principal: Principal) -> lifecycle.Actor:
    if principal.party_kind is PartyKind.AUTHORITY:
        return lifecycle.Actor.AUTHORITY
    if principal.party_kind is PartyKind.PROVIDER:
        return lifecycle.Actor.PROVIDER
    raise errors.Forbidden("only the issuing authority and the addressed provider record statuses")


async def record_status(
    session: AsyncSession,
    *,
    principal: Principal,
    referral_id: str,
    compact: str,
    received_at: datetime,
    receipts: ReceiptSigner,
    request_id: str,
) -> StatusRecorded:
    """Verify a signed status, check the transition, update the referral and its clocks, audit, receipt."""
    actor = _actor(principal)
    referral = await get_visible(session, principal=principal, referral_id=referral_id, for_update=True)
    unverified = parse_compact(compact, typ=STATUS_TYP)
    await _verified(session, document=unverified, principal=principal, at=received_at)
    try:
        document = StatusDocument.model_validate(unverified.claims)
    except ValidationError as exc:
        raise validation_problem(exc, "status") from exc
    if document.referral_id != referral.id:
        raise errors.ValidationFailed(
            "the status names another referral",
            errors=[
                {"loc": ["payload", "referral_id"], "msg": "must be this referral's id", "type": "mismatch"}
            ],
        )

    existing = (
        await session.execute(
            select(ReferralStatus).where(
                ReferralStatus.actor_party_id == principal.party_id, ReferralStatus.jti == document.jti
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        if existing.jws_sha256 != unverified.sha256:
            raise DocumentConflict(f"jti {document.jti!r} was already used for another document")
        return StatusRecorded(referral, existing, created=False)

    current = Status(referral.status)
    lifecycle.check_transition(DocumentType(referral.type), current, document.status, actor)
    # The stored item count suffices: re-validating up to 1000 stored items per status would be wasted work.
    problems = outcome_problems(referral.item_count, document)
    if problems:
        raise errors.ValidationFailed(
            "the item outcomes do not fit the referral",
            errors=[{"loc": ["payload", "items"], "msg": problem, "type": "outcome"} for problem in problems],
        )
    if current is Status.SUBMITTED and document.status is Status.ACKNOWLEDGED:
        # Acknowledging what was never fetched is also its delivery (see lifecycle's docstring).
        await mark_delivered(session, referral=referral, at=received_at, request_id=request_id)
        current = Status.DELIVERED

    changes = _clock_changes(referral, document, received_at)

    status_id = new_id()
    entry = await append_entry(
        session,
        action="status.recorded",
        subject_type="referral",
        subject_id=referral.id,
        actor_party=principal.party_id,
        actor_client=principal.client_id,
        request_id=request_id,
        digest=unverified.sha256,
        visible_to=[referral.issuer_id, referral.addressee_id],
    )
    receipt = receipts.sign(
        {
            "referral_id": referral.id,
            "status_id": status_id,
            "status": document.status.value,
            "jws_sha256": unverified.sha256,
            "received_at": isoformat(received_at),
            "deadline": isoformat_or_none(referral.deadline),
            "audit_entry_id": entry.id,
        }
    )
    status_values: dict[str, Any] = {
        "id": status_id,
        "referral_id": referral.id,
        "status": document.status.value,
        "previous_status": current.value,
        "actor_party_id": principal.party_id,
        "jti": document.jti,
        "jws": unverified.compact,
        "jws_sha256": unverified.sha256,
        "document": document.model_dump(mode="json", exclude_none=True),
        "recorded_at": received_at,
        "audit_entry_id": entry.id,
        "receipt": receipt,
    }
    await session.execute(insert(_statuses).values(**status_values))
    await session.execute(update(_referrals).where(_referrals.c.id == referral.id).values(**changes))
    for name, value in changes.items():
        setattr(referral, name, value)
    status = ReferralStatus(**status_values)
    emit(session, events.status_recorded(referral, status, received_at))
    return StatusRecorded(referral, status, created=True)
