"""Referral use cases: submit, read (with delivery), list, record statuses. Callers own the transaction."""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, and_, bindparam, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from referral.audit.service import (
    append_entry,
    new_entry_row,
    queued_entries_ctes,
    queued_entries_parameters,
    write_entry_rows,
)
from referral.auth.principal import PartyKind, Principal
from referral.core import errors
from referral.core.bulk import unnest_insert, unnest_parameters
from referral.core.ids import new_id
from referral.core.timeutil import isoformat, isoformat_or_none
from referral.feed.outbox import Event, emit, event_ctes, event_parameters, take_pending, wake_after_commit
from referral.parties.keys import cached_signing_key, signing_key
from referral.parties.service import cached_party_kind, party_kind
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
from referral.referrals.views import ReferralView

_referrals = cast(Table, Referral.__table__)
_items = cast(Table, ReferralItem.__table__)
_statuses = cast(Table, ReferralStatus.__table__)
_links = cast(Table, ReferralLink.__table__)

# Statements built once: SQLAlchemy then finds their compiled form without re-deriving a cache key each time.
_INSERT_REFERRAL = insert(_referrals)
_INSERT_ITEMS = insert(_items)
_INSERT_LINKS = insert(_links)
_INSERT_STATUS = insert(_statuses)
_OPEN_STATUSES = [status.value for status in lifecycle.OPEN_STATUSES]

# PostgreSQL: de-confliction looks for open referrals to the same providers, which a concurrent transaction
# (another group, a batch, another process) may be writing. ``referral_overlaps`` (migration 0009) takes a
# transaction-scoped advisory lock per addressee, in the order of the lock keys (never in a cycle), and then
# returns the items of open referrals covering one of the group's (addressee, URL) or (addressee, hash) pairs.
# It is a volatile function, so its look-up takes a snapshot once the locks are held: it sees every earlier
# referral to those providers as committed, including one committed while this transaction waited.
_DECONFLICTION_LOCK_NAMESPACE = 0x7266_6463  # "rfdc"
_OVERLAPS = (
    "SELECT * FROM referral_overlaps(:namespace, CAST(:addressees AS varchar[]), "
    "CAST(:url_addressees AS varchar[]), CAST(:urls AS varchar[]), CAST(:hash_addressees AS varchar[]), "
    "CAST(:hashes AS varchar[]), CAST(:open_statuses AS varchar[]))"
)
# Every write of the statements below waits for ``found`` (the CTE is computed before the first row is
# written), so the look-up never sees the group's own rows.
_AFTER_LOOKUP = "(SELECT count(*) FROM found) >= 0"

# PostgreSQL: a group of new referrals to be linked, in one statement. Data-modifying CTEs write the audit
# entries, queue them for the sequencer, and write the referrals and their items, each table from array
# parameters; the statement returns what ``found`` found (the earlier documents of the same group are
# matched in memory). Its events are written at commit, after the links: the links' foreign keys lock the
# referrals linked to (``FOR KEY SHARE``), and a status update holds its referral's row before it takes the
# event cursor rows in its last statement, so a group that held cursor rows while it waited for that referral
# would deadlock with it.
_POSTGRES_STORE = text(
    f"WITH found AS ({_OVERLAPS}), "  # noqa: S608 - names only; every value is bound
    f"{queued_entries_ctes(prefix='entry_', where=_AFTER_LOOKUP)}, "
    f"stored AS ({unnest_insert(_referrals, prefix='referral_', where=_AFTER_LOOKUP)}), "
    f"items AS ({unnest_insert(_items, prefix='item_', where=_AFTER_LOOKUP)}) "
    "SELECT * FROM found"
)

# PostgreSQL: a group with nothing to link, in one statement and its own implicit transaction (autocommit):
# only if ``found`` is empty does the statement write the group. Otherwise it writes nothing and the group is
# stored by ``store_referrals`` in a transaction of its own.
_NOTHING_TO_LINK = "NOT EXISTS (SELECT 1 FROM found)"
_POSTGRES_STORE_UNLINKED = text(
    f"WITH found AS ({_OVERLAPS}), "  # noqa: S608 - names only; every value is bound
    f"{queued_entries_ctes(prefix='entry_', where=_NOTHING_TO_LINK)}, "
    f"stored AS ({unnest_insert(_referrals, prefix='referral_', where=_NOTHING_TO_LINK)} RETURNING id), "
    f"items AS ({unnest_insert(_items, prefix='item_', where=_NOTHING_TO_LINK)}), "
    # The cursor rows are locked only once every referral is in (all of ``stored`` counted): an insert that
    # waits for a concurrent transaction with the same ``jti`` must not wait while holding them.
    f"{event_ctes(prefix='event_', where='(SELECT count(*) FROM stored) > 0')} "
    "SELECT count(*) FROM found"
)

_DELIVERED_ACTION = f"referral.{Status.DELIVERED.value}"
# PostgreSQL: a provider's fetch in one statement. The referrals still ``submitted`` become delivered (the
# status guard in the UPDATE: of racing fetches only one delivers), with a history row and an audit entry
# each; the read entries are written for every fetched referral.
_DELIVERED_ENTRIES = queued_entries_ctes(
    prefix="entry_", where="row.action <> :delivered_action OR row.subject_id IN (SELECT id FROM delivered)"
)
_DELIVERED_HISTORY = unnest_insert(
    _statuses, prefix="status_", where="row.referral_id IN (SELECT id FROM delivered)"
)
_POSTGRES_DELIVER = text(  # names only are formatted in; every value is bound
    "WITH delivered AS (UPDATE referrals SET status = :delivered, delivered_at = :at, updated_at = :at "  # noqa: S608
    "WHERE id = ANY(CAST(:waiting AS varchar[])) AND status = :submitted RETURNING id), "
    f"{_DELIVERED_ENTRIES}, history AS ({_DELIVERED_HISTORY}) "
    "SELECT id FROM delivered"
)


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


@dataclass(frozen=True, slots=True)
class NewReferral:
    """A referral just written, with the columns it was written with (no ORM object on the hot path)."""

    id: str
    type: str
    issuer_id: str
    addressee_id: str
    jti: str
    kid: str
    jws: str
    jws_sha256: str
    document: dict[str, Any]
    category: str
    item_count: int
    status: str
    received_at: datetime
    deadline: datetime | None
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    decided_at: datetime | None
    closed_at: datetime | None
    preserved_until: datetime | None
    overdue_notified_at: datetime | None
    expiry_warned_until: datetime | None
    updated_at: datetime
    audit_entry_id: str
    receipt: str


@dataclass(frozen=True)
class Submission:
    """A stored referral and whether this request created it (False for an idempotent repeat)."""

    referral: ReferralView
    created: bool


@dataclass(frozen=True, slots=True)
class PreparedReferral:
    """A verified and validated referral with everything storing it writes (ids, rows, the signed receipt),
    built before any transaction so that storing it is database work only."""

    principal: Principal
    unverified: UnverifiedDocument
    document: ReferralDocument
    entry: dict[str, Any]
    values: dict[str, Any]
    urls: frozenset[str]
    hashes: frozenset[str]

    @property
    def referral_id(self) -> str:
        """The id the referral will have."""
        return str(self.values["id"])


class _NotCached(Exception):
    """A signing key or party that preparing a document needs is not cached: prepare it with a session."""


async def _verified(
    session: AsyncSession | None, *, document: UnverifiedDocument, principal: Principal, at: datetime
) -> None:
    issuer = document.claims.get("iss")
    if issuer != principal.party_id:
        raise errors.Forbidden("the document's iss must be the calling party's id")
    if session is None:
        key = cached_signing_key(party_id=principal.party_id, kid=document.kid, at=at)
        if key is None:
            raise _NotCached
    else:
        key = await signing_key(session, party_id=principal.party_id, kid=document.kid, at=at)
    key.check_document(document.compact, alg=document.alg, kid=document.kid)


async def _parse_referral(
    session: AsyncSession | None, *, principal: Principal, compact: str, received_at: datetime
) -> tuple[UnverifiedDocument, ReferralDocument]:
    """Parse, verify against the issuer's key, and validate a signed referral."""
    unverified = parse_compact(compact, typ=REFERRAL_TYP)
    await _verified(session, document=unverified, principal=principal, at=received_at)
    try:
        return unverified, ReferralDocument.model_validate(unverified.claims)
    except ValidationError as exc:
        raise validation_problem(exc, "referral") from exc


def _repeat_of(existing: Referral, unverified: UnverifiedDocument, jti: str) -> Submission:
    if existing.jws_sha256 != unverified.sha256:
        raise DocumentConflict(f"jti {jti!r} was already used for another document")
    return Submission(existing, created=False)


async def _require_provider(session: AsyncSession | None, addressee_id: str) -> None:
    if session is None:
        kind = cached_party_kind(addressee_id)
        if kind is None:
            raise _NotCached
    else:
        kind = await party_kind(session, party_id=addressee_id)
    if kind != PartyKind.PROVIDER:
        raise errors.ValidationFailed(
            "the addressee is not a registered provider",
            errors=[
                {"loc": ["payload", "addressee"], "msg": "no provider with this id", "type": "addressee"}
            ],
        )


def _referral_values(
    *,
    referral_id: str,
    principal: Principal,
    unverified: UnverifiedDocument,
    document: ReferralDocument,
    received_at: datetime,
    entry_id: str,
    receipts: ReceiptSigner,
) -> dict[str, Any]:
    """The row of a new referral, with its signed receipt."""
    deadline = deadline_for(document, received_at)
    receipt = receipts.sign(
        {
            "referral_id": referral_id,
            "jws_sha256": unverified.sha256,
            "received_at": isoformat(received_at),
            "deadline": isoformat_or_none(deadline),
            "audit_entry_id": entry_id,
        }
    )
    return {
        "id": referral_id,
        "type": document.type.value,
        "issuer_id": principal.party_id,
        "addressee_id": document.addressee,
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
        "preserved_until": preservation_expires_at(document, received_at),
        "overdue_notified_at": None,
        "expiry_warned_until": None,
        "updated_at": received_at,
        "audit_entry_id": entry_id,
        "receipt": receipt,
    }


def _item_rows(prepared: PreparedReferral) -> list[dict[str, Any]]:
    return [
        {
            "referral_id": prepared.referral_id,
            "position": position,
            "addressee_id": prepared.document.addressee,
            "url": item.url,
            "account": item.account,
            "content_sha256": item.content_sha256,
        }
        for position, item in enumerate(prepared.document.items)
    ]


async def prepare_referral(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    principal: Principal,
    compact: str,
    received_at: datetime,
    receipts: ReceiptSigner,
    request_id: str,
) -> PreparedReferral:
    """Verify a signed referral against its issuer's key, validate it, and build its rows and receipt.

    Nothing is written, so this runs before the transaction that stores it (``store_referrals``). The
    issuer's key and the addressee's kind usually come from the caches; only when one is not cached is a
    session opened to load it (creating a session costs more than the rest of the preparation).
    """
    prepare = functools.partial(
        _prepare,
        principal=principal,
        compact=compact,
        received_at=received_at,
        receipts=receipts,
        request_id=request_id,
    )
    try:
        return await prepare(None)
    except _NotCached:
        async with sessionmaker() as session:
            return await prepare(session)


async def _prepare(
    session: AsyncSession | None,
    *,
    principal: Principal,
    compact: str,
    received_at: datetime,
    receipts: ReceiptSigner,
    request_id: str,
) -> PreparedReferral:
    """``prepare_referral`` with the session to load keys and parties with (``None``: from the caches only,
    raising ``_NotCached`` when one is missing)."""
    require_submitter(principal)
    unverified, document = await _parse_referral(
        session, principal=principal, compact=compact, received_at=received_at
    )
    await _require_provider(session, document.addressee)
    referral_id = new_id()
    entry = new_entry_row(
        action="referral.submitted",
        subject_type="referral",
        subject_id=referral_id,
        actor_party=principal.party_id,
        actor_client=principal.client_id,
        request_id=request_id,
        digest=unverified.sha256,
        visible_to=[principal.party_id, document.addressee],
    )
    values = _referral_values(
        referral_id=referral_id,
        principal=principal,
        unverified=unverified,
        document=document,
        received_at=received_at,
        entry_id=entry["id"],
        receipts=receipts,
    )
    return PreparedReferral(
        principal=principal,
        unverified=unverified,
        document=document,
        entry=entry,
        values=values,
        urls=frozenset(item.url for item in document.items if item.url),
        hashes=frozenset(item.content_sha256 for item in document.items if item.content_sha256),
    )


async def find_repeat(session: AsyncSession, prepared: PreparedReferral) -> Submission | None:
    """The earlier referral with the same issuer and ``jti`` as an idempotent repeat, ``DocumentConflict``
    when it was another document, or ``None`` when there is none."""
    existing = (
        await session.execute(
            select(Referral).where(
                Referral.issuer_id == prepared.principal.party_id, Referral.jti == prepared.document.jti
            )
        )
    ).scalar_one_or_none()
    return None if existing is None else _repeat_of(existing, prepared.unverified, prepared.document.jti)


async def submit_referral(
    session: AsyncSession,
    *,
    principal: Principal,
    compact: str,
    received_at: datetime,
    receipts: ReceiptSigner,
    request_id: str,
) -> Submission:
    """Verify a signed referral, store it verbatim with its items, audit it, and sign its receipt; a
    repeated ``jti`` answers the earlier referral (or ``DocumentConflict``)."""
    prepared = await _prepare(
        session,
        principal=principal,
        compact=compact,
        received_at=received_at,
        receipts=receipts,
        request_id=request_id,
    )
    repeat = await find_repeat(session, prepared)
    if repeat is not None:
        return repeat
    (submission,) = await store_referrals(session, [prepared])
    return submission


def require_submitter(principal: Principal) -> None:
    """Only authorities submit referrals."""
    if principal.party_kind is not PartyKind.AUTHORITY:
        raise errors.Forbidden("only authorities submit referrals")


async def submit_referrals(
    session: AsyncSession,
    *,
    principal: Principal,
    documents: Sequence[PreparedReferral | errors.Problem],
) -> list[Submission | errors.Problem]:
    """Store a batch of prepared documents (or the problems that refused them) in one transaction, with a
    few statements for all of them: each is accepted, answered as a repeat, or refused on its own, with the
    same outcome as ``submit_referral`` one after the other, including de-confliction links between
    documents of the same batch.

    A concurrent request that stores one of the same ``jti`` first makes the transaction fail with an
    ``IntegrityError``; the caller then stores the documents one by one.
    """
    outcomes: list[Submission | errors.Problem | None] = [
        document if isinstance(document, errors.Problem) else None for document in documents
    ]
    parsed = [
        (index, document)
        for index, document in enumerate(documents)
        if isinstance(document, PreparedReferral)
    ]
    new = await _new_in_batch(session, principal=principal, parsed=parsed, outcomes=outcomes)
    stored = await store_referrals(session, [prepared for _index, prepared in new])
    created = {submission.referral.jti: submission.referral for submission in stored}
    for (index, _prepared), submission in zip(new, stored, strict=True):
        outcomes[index] = submission
    for index, prepared in parsed:
        if outcomes[index] is None:  # a repeat of an earlier document of the same batch
            outcomes[index] = Submission(created[prepared.document.jti], created=False)
    return [outcome for outcome in outcomes if outcome is not None]


async def _new_in_batch(
    session: AsyncSession,
    *,
    principal: Principal,
    parsed: list[tuple[int, PreparedReferral]],
    outcomes: list[Submission | errors.Problem | None],
) -> list[tuple[int, PreparedReferral]]:
    """The documents to store; repeats of stored documents and conflicts go into ``outcomes``."""
    jtis = sorted({prepared.document.jti for _index, prepared in parsed})
    earlier: dict[str, Referral] = {}
    if jtis:
        query = select(Referral).where(Referral.issuer_id == principal.party_id, Referral.jti.in_(jtis))
        earlier = {referral.jti: referral for referral in (await session.execute(query)).scalars()}
    new: list[tuple[int, PreparedReferral]] = []
    in_batch: dict[str, PreparedReferral] = {}
    for index, prepared in parsed:
        jti = prepared.document.jti
        try:
            if jti in earlier:
                outcomes[index] = _repeat_of(earlier[jti], prepared.unverified, jti)
                continue
            if jti in in_batch:
                if in_batch[jti].unverified.sha256 != prepared.unverified.sha256:
                    raise DocumentConflict(f"jti {jti!r} was already used for another document")
                continue
        except errors.Problem as problem:
            outcomes[index] = problem
            continue
        in_batch[jti] = prepared
        new.append((index, prepared))
    return new


async def store_referrals(session: AsyncSession, prepared: Sequence[PreparedReferral]) -> list[Submission]:
    """Write prepared referrals (of any issuers) with their items, audit entries, de-confliction links and
    events, a statement per table for all of them, in the caller's transaction.

    Nothing looks for repeats here: a ``jti`` stored before fails the INSERT with an ``IntegrityError`` (use
    ``find_repeat`` first where one is expected). Documents are linked as if stored one after the other.
    """
    if not prepared:
        return []
    items = [row for one in prepared for row in _item_rows(one)]
    referrals = [NewReferral(**one.values) for one in prepared]
    submitted = [event for new in referrals for event in events.submitted(new, new.received_at)]
    if session.get_bind().dialect.name == "postgresql":
        found = await session.execute(_POSTGRES_STORE, _store_parameters(prepared, items))
        stored_items = [(str(row[0]), str(row[1]), str(row[2]), row[3], row[4]) for row in found]
    else:
        stored_items = await _stored_overlaps(session, prepared)
        await write_entry_rows(session, [one.entry for one in prepared])
        await session.execute(_INSERT_REFERRAL, [one.values for one in prepared])
        await session.execute(_INSERT_ITEMS, items)
    emit(session, submitted)
    related_by_id = _overlapping(prepared, stored_items)
    links = [
        link
        for one in prepared
        for other, _issuer in related_by_id[one.referral_id]
        for link in (
            {"referral_id": one.referral_id, "related_id": other, "created_at": one.values["received_at"]},
            {"referral_id": other, "related_id": one.referral_id, "created_at": one.values["received_at"]},
        )
    ]
    if links:
        await session.execute(_INSERT_LINKS, links)
    # After the group's submitted events: a related event names a referral its recipient has heard of.
    for referral in referrals:
        emit(session, events.related(referral, related_by_id[referral.id], referral.received_at))
    return [Submission(referral, created=True) for referral in referrals]


def _store_parameters(prepared: Sequence[PreparedReferral], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of the PostgreSQL statements that store a group (without its events)."""
    return {
        "namespace": _DECONFLICTION_LOCK_NAMESPACE,
        "addressees": sorted({one.document.addressee for one in prepared}),
        **queued_entries_parameters([one.entry for one in prepared], prefix="entry_"),
        **unnest_parameters(_referrals, [one.values for one in prepared], prefix="referral_"),
        **unnest_parameters(_items, items, prefix="item_"),
        **_overlap_keys(prepared),
        "open_statuses": _OPEN_STATUSES,
    }


async def store_unlinked(
    connection: AsyncConnection, prepared: Sequence[PreparedReferral]
) -> tuple[list[Submission], set[str]] | None:
    """PostgreSQL: store a group that has nothing to link in one statement, on a connection in autocommit
    mode (the statement is its own transaction: committed when this returns). Returns the submissions and
    the recipients of their events (to wake in this process), or ``None`` if nothing was written because
    the group must be linked to referrals stored before or to each other (``store_referrals`` does that).

    As ``store_referrals``, nothing looks for repeats: a ``jti`` stored before fails the statement with an
    ``IntegrityError``, and nothing of the group was written."""
    if not prepared:
        return [], set()
    if any(_overlapping(prepared, []).values()):
        return None
    items = [row for one in prepared for row in _item_rows(one)]
    referrals = [NewReferral(**one.values) for one in prepared]
    submitted = [event for new in referrals for event in events.submitted(new, new.received_at)]
    event_values, recipients = event_parameters(submitted, prefix="event_")
    parameters = {**_store_parameters(prepared, items), **event_values}
    overlaps = (await connection.execute(_POSTGRES_STORE_UNLINKED, parameters)).scalar_one()
    if overlaps:
        return None
    return [Submission(referral, created=True) for referral in referrals], recipients


def _overlap_keys(batch: Sequence[PreparedReferral]) -> dict[str, list[str]]:
    """What de-confliction looks for: the batch's (addressee, URL) and (addressee, content hash) pairs, as
    aligned lists. Looked up pair by pair, each is an index probe (``ix_referral_items_addressee_id_url``,
    ``..._content_sha256``), however many items the providers already hold."""
    urls = sorted({(one.document.addressee, url) for one in batch for url in one.urls})
    hashes = sorted({(one.document.addressee, digest) for one in batch for digest in one.hashes})
    return {
        "url_addressees": [addressee for addressee, _ in urls],
        "urls": [url for _, url in urls],
        "hash_addressees": [addressee for addressee, _ in hashes],
        "hashes": [digest for _, digest in hashes],
    }


StoredItem = tuple[str, str, str, str | None, str | None]
"""An item of a stored open referral: ``(referral_id, issuer_id, addressee_id, url, content_sha256)``."""


@functools.lru_cache(maxsize=256)
def _sqlite_overlaps(column_name: str, addressees: int) -> Any:
    """SQLite: the look-up of ``_stored_overlaps`` by ``column_name`` (``url`` or ``content_sha256``) for
    ``addressees`` addressees, built once per shape (Core, the tables' columns): per addressee
    ``addressee_id = :addressee_<n> AND <column> IN (:values_<n>)``, the values an expanding parameter.
    Building the expression for every group cost more than running it. Groups and batches hold at most 100
    documents, so the 256 kept cover every shape in use."""
    column = _items.c[column_name]
    return (
        select(
            _items.c.referral_id,
            _referrals.c.issuer_id,
            _items.c.addressee_id,
            _items.c.url,
            _items.c.content_sha256,
        )
        .join(_referrals, _referrals.c.id == _items.c.referral_id)
        .where(
            or_(
                *(
                    and_(
                        _items.c.addressee_id == bindparam(f"addressee_{number}"),
                        column.in_(bindparam(f"values_{number}", expanding=True)),
                    )
                    for number in range(addressees)
                )
            ),
            _referrals.c.status.in_(_OPEN_STATUSES),
        )
    )


async def _stored_overlaps(session: AsyncSession, batch: Sequence[PreparedReferral]) -> list[StoredItem]:
    """SQLite: the items of stored open referrals to the batch's addressees that cover one of its URLs or
    hashes (for the same addressee).

    Per addressee ``addressee_id = ? AND url IN (...)``, an index probe per value: SQLite uses no index for
    a row-value ``(addressee_id, url) IN (VALUES ...)`` and read every referral instead (20 ms a look-up
    with 50 000 referrals)."""
    keys = _overlap_keys(batch)
    connection = await session.connection()
    found: set[StoredItem] = set()
    for column_name, addressees, values in (
        ("url", keys["url_addressees"], keys["urls"]),
        ("content_sha256", keys["hash_addressees"], keys["hashes"]),
    ):
        if not values:
            continue
        by_addressee: dict[str, list[str]] = {}
        for addressee, value in zip(addressees, values, strict=True):
            by_addressee.setdefault(addressee, []).append(value)
        parameters: dict[str, Any] = {}
        for number, (addressee, wanted) in enumerate(by_addressee.items()):
            parameters[f"addressee_{number}"] = addressee
            parameters[f"values_{number}"] = wanted
        rows = await connection.execute(_sqlite_overlaps(column_name, len(by_addressee)), parameters)
        found.update((str(row[0]), str(row[1]), str(row[2]), row[3], row[4]) for row in rows)
    return sorted(found, key=lambda item: (item[0], item[3] or "", item[4] or ""))


def _overlapping(
    batch: Sequence[PreparedReferral], stored: Sequence[StoredItem]
) -> dict[str, list[tuple[str, str]]]:
    """De-confliction: for each new referral, the open referrals to the same provider that cover one of its
    URLs or content hashes, as ``(id, issuer_id)`` pairs: those stored before, and earlier documents of the
    same batch (as if they had been submitted one after the other)."""
    related: dict[str, list[tuple[str, str]]] = {}
    for position, prepared in enumerate(batch):
        addressee = prepared.document.addressee
        found: set[tuple[str, str]] = {
            (referral_id, issuer_id)
            for referral_id, issuer_id, addressee_id, url, digest in stored
            if addressee_id == addressee
            and (
                (url is not None and url in prepared.urls)
                or (digest is not None and digest in prepared.hashes)
            )
        }
        found.update(
            (other.referral_id, other.principal.party_id)
            for other in batch[:position]
            if other.document.addressee == addressee
            and (other.urls & prepared.urls or other.hashes & prepared.hashes)
        )
        related[prepared.referral_id] = sorted(found)
    return related


def _visible(referral: Referral, principal: Principal) -> bool:
    if principal.party_kind is PartyKind.AUTHORITY:
        return referral.issuer_id == principal.party_id
    if principal.party_kind is PartyKind.PROVIDER:
        return referral.addressee_id == principal.party_id
    return False


_GET_REFERRAL = select(Referral).where(Referral.id == bindparam("referral_id"))
_GET_REFERRAL_FOR_UPDATE = _GET_REFERRAL.with_for_update()


@functools.cache
def _update_referral(columns: tuple[str, ...]) -> Any:
    """``UPDATE referrals SET <columns>`` of one referral, built once per set of columns (parameters
    ``referral_id`` and ``<column>_``)."""
    return (
        update(_referrals)
        .where(_referrals.c.id == bindparam("referral_id"))
        .values({name: bindparam(f"{name}_") for name in columns})
    )


def set_loaded(referral: Referral, **values: Any) -> None:
    """Values a statement just wrote to the referral's row, set on the object as loaded, so that no flush
    writes them a second time."""
    for name, value in values.items():
        set_committed_value(referral, name, value)


async def get_visible(
    session: AsyncSession, *, principal: Principal, referral_id: str, for_update: bool = False
) -> Referral:
    """The referral if the caller issued it or is its addressee; 404 otherwise, whether or not it exists."""
    query = _GET_REFERRAL_FOR_UPDATE if for_update else _GET_REFERRAL
    referral = (await session.execute(query, {"referral_id": referral_id})).scalar_one_or_none()
    if referral is None or not _visible(referral, principal):
        raise errors.NotFound("no referral with this id")
    return referral


async def record_server_statuses(
    session: AsyncSession,
    *,
    referrals: Sequence[Referral],
    status: Status,
    at: datetime,
    request_id: str | None,
) -> list[ReferralStatus]:
    """Record a status the service sets itself (expired) for each of ``referrals``, in the history and the
    audit log: three statements however many there are (their entries, the entries' queue rows, the history
    rows). The referrals' own rows are the caller's to update."""
    if not referrals:
        return []
    entries = [
        new_entry_row(
            action=f"referral.{status.value}",
            subject_type="referral",
            subject_id=referral.id,
            request_id=request_id,
            visible_to=[referral.issuer_id, referral.addressee_id],
        )
        for referral in referrals
    ]
    await write_entry_rows(session, entries)
    rows = [
        _server_status_row(referral, status, at=at, audit_entry_id=entry["id"])
        for referral, entry in zip(referrals, entries, strict=True)
    ]
    await session.execute(_INSERT_STATUS, rows)
    return [ReferralStatus(**row) for row in rows]


def _server_status_row(
    referral: Referral, status: Status, *, at: datetime, audit_entry_id: str
) -> dict[str, Any]:
    """A history row for a status the service records itself: no signer, no document, no receipt."""
    return {
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
        "audit_entry_id": audit_entry_id,
        "receipt": None,
    }


async def _audit_read(
    session: AsyncSession, *, referral: Referral, reader: Principal, request_id: str | None
) -> None:
    """A party read the referral's signed content: a sensitive read, in the audit log."""
    await append_entry(session, **_read_entry(referral, reader, request_id))


def _read_entry(referral: Referral, reader: Principal, request_id: str | None) -> dict[str, Any]:
    """The audit entry (``append_entry``'s arguments) of a party's read of the referral's signed content."""
    return {
        "action": "referral.read",
        "subject_type": "referral",
        "subject_id": referral.id,
        "actor_party": reader.party_id,
        "actor_client": reader.client_id,
        "request_id": request_id,
        "digest": referral.jws_sha256,
        "visible_to": [referral.issuer_id, referral.addressee_id],
    }


def _delivery_rows(
    referral: Referral, *, at: datetime, request_id: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The audit entry and the history row of a referral's delivery (the entry made first)."""
    entry = new_entry_row(
        action=_DELIVERED_ACTION,
        subject_type="referral",
        subject_id=referral.id,
        request_id=request_id,
        visible_to=[referral.issuer_id, referral.addressee_id],
    )
    return entry, _server_status_row(referral, Status.DELIVERED, at=at, audit_entry_id=entry["id"])


def _delivered(session: AsyncSession, referral: Referral, history_row: dict[str, Any], at: datetime) -> None:
    """A delivery just written (or being written by the transaction's last statement): the referral as
    delivered on the object, and its event."""
    set_loaded(referral, status=Status.DELIVERED.value, delivered_at=at, updated_at=at)
    emit(session, events.delivered(referral, ReferralStatus(**history_row), at))


async def deliver_many(
    session: AsyncSession,
    *,
    referrals: Sequence[Referral],
    at: datetime,
    request_id: str | None,
    reader: Principal | None = None,
) -> None:
    """Record the delivery of referrals on the provider's first fetch (a detail, a feed page or a listing of
    up to hundreds, or an acknowledgement of what was never fetched): only those still ``submitted``,
    guarded by the status in the UPDATE, so a referral is delivered only once however many fetches race.
    With a ``reader``, each referral's read of its signed content is audited too.

    On PostgreSQL all of it is one statement; elsewhere one statement per table. The delivery entries come
    before the read entries, in referral id order.
    """
    received = sorted({referral.id: referral for referral in referrals}.values(), key=lambda one: one.id)
    waiting = [referral for referral in received if referral.status == Status.SUBMITTED.value]
    if not waiting and (reader is None or not received):
        return
    # Made in this order, the delivery entries' ids (the log's order) come before the reads'.
    deliveries = {referral.id: _delivery_rows(referral, at=at, request_id=request_id) for referral in waiting}
    entries = {referral_id: entry for referral_id, (entry, _row) in deliveries.items()}
    reads = (
        []
        if reader is None
        else [new_entry_row(**_read_entry(referral, reader, request_id)) for referral in received]
    )
    history = {referral_id: row for referral_id, (_entry, row) in deliveries.items()}
    if session.get_bind().dialect.name == "postgresql":
        result = await session.execute(
            _POSTGRES_DELIVER,
            {
                "waiting": [referral.id for referral in waiting],
                "at": at,
                "submitted": Status.SUBMITTED.value,
                "delivered": Status.DELIVERED.value,
                "delivered_action": _DELIVERED_ACTION,
                **queued_entries_parameters([*entries.values(), *reads], prefix="entry_"),
                **unnest_parameters(_statuses, history.values(), prefix="status_"),
            },
        )
        delivered = set(result.scalars())
    else:
        delivered = set()
        if waiting:
            changed = await session.execute(
                update(_referrals)
                .where(_referrals.c.id.in_(list(entries)), _referrals.c.status == Status.SUBMITTED.value)
                .values(status=Status.DELIVERED.value, delivered_at=at, updated_at=at)
                .returning(_referrals.c.id)
            )
            delivered = set(changed.scalars())
        await write_entry_rows(
            session, [*(entries[referral_id] for referral_id in entries if referral_id in delivered), *reads]
        )
        if delivered:
            await session.execute(
                _INSERT_STATUS, [row for referral_id, row in history.items() if referral_id in delivered]
            )
    for referral in waiting:
        if referral.id in delivered:
            _delivered(session, referral, history[referral.id], at)


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
    received = list(
        (
            await session.execute(
                select(Referral)
                .where(Referral.id.in_(sorted(set(referral_ids))), Referral.addressee_id == provider_id)
                .order_by(Referral.id)
            )
        ).scalars()
    )
    await deliver_many(session, referrals=received, at=at, request_id=request_id, reader=reader)


async def read_referral(
    session: AsyncSession, *, principal: Principal, referral_id: str, at: datetime, request_id: str
) -> tuple[Referral, list[ReferralStatus], list[tuple[str, bool]]]:
    """The referral with history and links; the read is audited, and a provider's first read delivers it."""
    referral = await get_visible(session, principal=principal, referral_id=referral_id)
    if principal.party_kind is PartyKind.PROVIDER:  # its read of the content, and the first time its delivery
        await deliver_many(session, referrals=[referral], at=at, request_id=request_id, reader=principal)
    else:
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
        await deliver_many(session, referrals=page, at=now, request_id=request_id)
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


async def _repeated_status(
    session: AsyncSession, referral: Referral, document: StatusDocument, unverified: UnverifiedDocument
) -> StatusRecorded | None:
    """The status recorded earlier under the same issuer and ``jti``; a conflict if its bytes differ."""
    existing = (
        await session.execute(
            select(ReferralStatus).where(
                ReferralStatus.actor_party_id == document.iss, ReferralStatus.jti == document.jti
            )
        )
    ).scalar_one_or_none()
    if existing is None:
        return None
    if existing.jws_sha256 != unverified.sha256:
        raise DocumentConflict(f"jti {document.jti!r} was already used for another document")
    return StatusRecorded(referral, existing, created=False)


async def record_status(
    session: AsyncSession,
    *,
    principal: Principal,
    referral_id: str,
    compact: str,
    received_at: datetime,
    receipts: ReceiptSigner,
    request_id: str,
    look_for_repeat: bool = True,
) -> StatusRecorded:
    """Verify a signed status, check the transition, update the referral and its clocks, audit, receipt.

    ``look_for_repeat=False`` leaves a repeated ``jti`` to the unique constraint, as in ``submit_referral``.
    It must be the last write of the caller's transaction: on PostgreSQL its statement writes the events of
    the whole transaction and takes their cursor rows (see ``_postgres_record_status``).
    """
    actor = _actor(principal)
    # The document is verified before the referral's row is locked (and, when the signing key is cached,
    # before the transaction begins): what it says does not depend on the row, and the lock is then held only
    # for the checks and the writes. The errors it can give depend on the document and the caller only, so
    # they tell nothing of whether a referral the caller cannot see exists.
    unverified = parse_compact(compact, typ=STATUS_TYP)
    await _verified(session, document=unverified, principal=principal, at=received_at)
    try:
        document = StatusDocument.model_validate(unverified.claims)
    except ValidationError as exc:
        raise validation_problem(exc, "status") from exc
    referral = await get_visible(session, principal=principal, referral_id=referral_id, for_update=True)
    if document.referral_id != referral.id:
        raise errors.ValidationFailed(
            "the status names another referral",
            errors=[
                {"loc": ["payload", "referral_id"], "msg": "must be this referral's id", "type": "mismatch"}
            ],
        )

    if look_for_repeat and (repeat := await _repeated_status(session, referral, document, unverified)):
        return repeat

    current = Status(referral.status)
    try:
        lifecycle.check_transition(DocumentType(referral.type), current, document.status, actor)
        # The stored item count suffices: re-validating up to 1000 stored items per status would be waste.
        problems = outcome_problems(referral.item_count, document)
        if problems:
            raise errors.ValidationFailed(
                "the item outcomes do not fit the referral",
                errors=[
                    {"loc": ["payload", "items"], "msg": problem, "type": "outcome"} for problem in problems
                ],
            )
    except errors.Problem:
        # A repeat of a status recorded earlier answers as that status, though its transition is past now.
        if not look_for_repeat and (
            repeat := await _repeated_status(session, referral, document, unverified)
        ):
            return repeat
        raise
    postgresql = session.get_bind().dialect.name == "postgresql"
    # On PostgreSQL, what the status's one statement writes besides the status: a delivery's entry, history
    # row and column.
    entries: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    delivery_columns: dict[str, Any] = {}
    if current is Status.SUBMITTED and document.status is Status.ACKNOWLEDGED:
        # Acknowledging what was never fetched is also its delivery (see lifecycle's docstring).
        if postgresql:
            # The row is locked by this transaction, so no fetch can deliver it meanwhile: the delivery is
            # written with the acknowledgement, its event before the acknowledgement's.
            delivery_entry, delivery_row = _delivery_rows(referral, at=received_at, request_id=request_id)
            entries.append(delivery_entry)
            history.append(delivery_row)
            delivery_columns["delivered_at"] = received_at
            _delivered(session, referral, delivery_row, received_at)
        else:
            await deliver_many(session, referrals=[referral], at=received_at, request_id=request_id)
        current = Status.DELIVERED

    status_changes = _clock_changes(referral, document, received_at)
    status_id = new_id()
    entry = new_entry_row(
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
            "audit_entry_id": entry["id"],
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
        "audit_entry_id": entry["id"],
        "receipt": receipt,
    }
    status = ReferralStatus(**status_values)
    # Set before the write, for the events to tell of the referral as changed; if the write fails, the
    # transaction and this object go with it.
    set_loaded(referral, **status_changes)
    recorded = events.status_recorded(referral, status, received_at)
    if postgresql:
        await _record_status_postgres(
            session,
            referral_id=referral.id,
            changes={**delivery_columns, **status_changes},
            entries=[*entries, entry],
            history=[*history, status_values],
            recorded=recorded,
        )
    else:
        await write_entry_rows(session, [entry])
        await session.execute(_INSERT_STATUS, status_values)
        await session.execute(
            _update_referral(tuple(status_changes)),
            {"referral_id": referral.id, **{f"{k}_": v for k, v in status_changes.items()}},
        )
        emit(session, recorded)
    return StatusRecorded(referral, status, created=True)


@functools.cache
def _postgres_record_status(columns: tuple[str, ...]) -> Any:
    """PostgreSQL: a status's writes in one statement, built once per set of changed referral columns
    (parameters ``referral_id`` and ``referral_<column>``): the referral's update, the audit entries and
    their places in the sequencer's queue, the history rows (a delivery's first, when acknowledging what was
    never fetched delivers it), and the events of the transaction (with their cursors and NOTIFY). It is the
    transaction's last statement, made while the referral's row is locked, as the events written at commit
    were before: the cursor rows are taken last, and only once the history rows are in (an insert that
    waits for a concurrent transaction with the same ``jti`` must not hold them)."""
    # Column names only are formatted in; every value is a bound parameter.
    assignments = ", ".join(f"{name} = :referral_{name}" for name in columns)
    return text(
        f"WITH changed AS (UPDATE {_referrals.name} SET {assignments} "  # noqa: S608 - names only
        "WHERE id = :referral_id RETURNING id), "
        f"{queued_entries_ctes(prefix='entry_')}, "
        f"recorded AS ({unnest_insert(_statuses, prefix='status_')} RETURNING id), "
        f"{event_ctes(prefix='event_', where='(SELECT count(*) FROM recorded) > 0')} "
        "SELECT count(*) FROM changed"
    )


async def _record_status_postgres(
    session: AsyncSession,
    *,
    referral_id: str,
    changes: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    recorded: Sequence[Event],
) -> None:
    """Write a status (and the delivery that comes with it) with ``_postgres_record_status``: the entries
    and history rows in the order given, the events emitted earlier in the transaction (a delivery's) before
    the status's own."""
    parameters = {
        "referral_id": referral_id,
        **{f"referral_{name}": value for name, value in changes.items()},
        **queued_entries_parameters(entries, prefix="entry_"),
        **unnest_parameters(_statuses, history, prefix="status_"),
    }
    event_values, recipients = take_pending(session, recorded, prefix="event_")
    parameters.update(event_values)
    changed = (await session.execute(_postgres_record_status(tuple(changes)), parameters)).scalar_one()
    if changed != 1:  # the row is locked by this transaction: anything else is a bug, never a silent skip
        raise RuntimeError(f"the status update changed {changed} referral rows")
    wake_after_commit(session, recipients)
