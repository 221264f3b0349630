"""``/v1/referrals``: submit (single and batch), list, read, and record statuses."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from referral.auth.principal import Principal, require_scope
from referral.core import errors
from referral.core.appkeys import engine_key, service_keys_key, sessionmaker_key, settings_key
from referral.core.groupcommit import GroupCommit
from referral.core.timeutil import utcnow
from referral.core.web import json_body, json_response, problem_response, request_id
from referral.feed.notifier import Notifier, notifier_key
from referral.referrals import service, views
from referral.referrals.documents import DocumentType, Status
from referral.referrals.signed import ReceiptSigner

T = TypeVar("T")

routes = web.RouteTableDef()
receipt_signer_key = web.AppKey("receipt_signer_key", ReceiptSigner)
submissions_key = web.AppKey("submissions_key", GroupCommit[service.PreparedReferral, service.Submission])

MAX_BATCH = 100
JOSE = "application/jose"


MAX_GROUP = 100
GROUP_WRITERS = 2


async def referrals_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the receipt signer over the service keys, and the group commit of submissions."""
    app[receipt_signer_key] = ReceiptSigner(app[service_keys_key])
    sessionmaker = app[sessionmaker_key]
    # PostgreSQL: several groups in flight. SQLite has one connection (and one writer) per process.
    sqlite = app[settings_key].database_url.startswith("sqlite")
    # PostgreSQL: a group with nothing to link is one statement in autocommit mode (``store_unlinked``).
    autocommit = None if sqlite else app[engine_key].execution_options(isolation_level="AUTOCOMMIT")
    store = functools.partial(_store_group, sessionmaker, autocommit, app[notifier_key])
    app[submissions_key] = GroupCommit(store, max_group=MAX_GROUP, writers=1 if sqlite else GROUP_WRITERS)
    yield
    await app[submissions_key].close()


async def _compact_from_body(request: web.Request) -> str:
    """The compact JWS of a single-document POST: ``application/jose`` or JSON ``{"jws": ...}``."""
    if request.content_type == JOSE:
        try:
            return (await request.read()).decode("ascii")
        except UnicodeDecodeError as exc:
            raise errors.BadRequest("a compact JWS is ASCII") from exc
    if request.content_type == "application/json":
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("jws"), str) or set(body) != {"jws"}:
            raise errors.BadRequest('a JSON body must be {"jws": "<compact JWS>"}')
        return str(body["jws"])
    raise errors.UnsupportedMediaType(f"send {JOSE} or application/json")


def _submission_body(submission: service.Submission, now: datetime) -> dict[str, Any]:
    return {"referral": views.summary(submission.referral, now), "receipt": submission.referral.receipt}


async def _once_more_on_race(
    request: web.Request, use_case: Callable[[AsyncSession, bool], Awaitable[T]]
) -> T:
    """Run a use case in one transaction, first optimistically (``look_for_repeat=False``: a repeated ``jti``
    is caught by the unique constraint); on an ``IntegrityError`` (a repeat, or a concurrent request that
    stored the same ``jti`` first) run it once more, looking for the earlier document, so that it answers as
    an idempotent repeat or a conflict."""
    try:
        async with request.app[sessionmaker_key].begin() as session:
            return await use_case(session, False)
    except IntegrityError:
        async with request.app[sessionmaker_key].begin() as session:
            return await use_case(session, True)


async def _store_group(
    sessionmaker: async_sessionmaker[AsyncSession],
    autocommit: AsyncEngine | None,
    notifier: Notifier,
    group: Sequence[service.PreparedReferral],
) -> list[service.Submission | BaseException]:
    """Store a group of single submissions in one transaction (``GroupCommit``'s flush).

    On PostgreSQL a group with nothing to link is one statement in its own transaction (``autocommit``, an
    engine in autocommit mode); one that must be linked (or on SQLite) is stored in a transaction.
    Optimistic: nothing looks for repeats first. If the transaction fails on a constraint (a repeated
    ``jti``, or two requests with the same one in flight), nothing of it was written, and each document is
    stored on its own instead, looking for the earlier document, so each answers as it would have alone.
    """
    try:
        if autocommit is not None:
            async with autocommit.connect() as connection:
                unlinked = await service.store_unlinked(connection, group)
            if unlinked is not None:
                stored, recipients = unlinked
                notifier.wake(recipients)
                return list(stored)
        async with sessionmaker.begin() as session:
            return list(await service.store_referrals(session, group))
    except IntegrityError:
        pass
    outcomes: list[service.Submission | BaseException] = []
    for prepared in group:
        try:
            outcomes.append(await _store_alone(sessionmaker, prepared))
        except errors.Problem as problem:
            outcomes.append(problem)
    return outcomes


async def _store_alone(
    sessionmaker: async_sessionmaker[AsyncSession], prepared: service.PreparedReferral
) -> service.Submission:
    """One prepared referral in its own transaction: the earlier document if the ``jti`` was used, else a
    new referral; a concurrent request that stores the same ``jti`` in between is found the second time."""
    try:
        async with sessionmaker.begin() as session:
            repeat = await service.find_repeat(session, prepared)
            return repeat or (await service.store_referrals(session, [prepared]))[0]
    except IntegrityError:
        async with sessionmaker.begin() as session:
            repeat = await service.find_repeat(session, prepared)
            return repeat or (await service.store_referrals(session, [prepared]))[0]


async def _prepare(request: web.Request, principal: Principal, compact: str) -> service.PreparedReferral:
    """Verify and prepare a referral received now, outside any transaction."""
    return await service.prepare_referral(
        request.app[sessionmaker_key],
        principal=principal,
        compact=compact,
        received_at=utcnow(),
        receipts=request.app[receipt_signer_key],
        request_id=request_id(request),
    )


@routes.post("/v1/referrals")
async def submit_referral(request: web.Request) -> web.Response:
    """Submit a signed referral, removal order or preservation request."""
    principal = require_scope(request, "referrals:write")
    compact = await _compact_from_body(request)
    submission = await request.app[submissions_key].submit(await _prepare(request, principal, compact))
    location = f"/v1/referrals/{submission.referral.id}"
    return json_response(
        _submission_body(submission, utcnow()),
        status=201 if submission.created else 200,
        headers={"Location": location},
    )


@routes.post("/v1/referrals:batch")
async def submit_referrals_batch(request: web.Request) -> web.Response:
    """Submit up to 100 signed documents in one transaction; each is accepted or refused on its own."""
    principal = require_scope(request, "referrals:write")
    body = await json_body(request)
    documents = body.get("documents") if isinstance(body, dict) else None
    if not isinstance(documents, list) or not all(isinstance(item, str) for item in documents):
        raise errors.BadRequest('the body must be {"documents": ["<compact JWS>", ...]}')
    if not 1 <= len(documents) <= MAX_BATCH:
        raise errors.BadRequest(f"a batch holds 1 to {MAX_BATCH} documents")
    service.require_submitter(principal)
    sessionmaker = request.app[sessionmaker_key]
    # Verified and prepared before the transaction, which then holds its connection only to write.
    prepared: list[service.PreparedReferral | errors.Problem] = []
    for compact in documents:
        try:
            prepared.append(await _prepare(request, principal, compact))
        except errors.Problem as problem:
            prepared.append(problem)
        # Preparing is CPU work that rarely waits (keys and parties are cached): let other requests run
        # between documents, above all transactions that hold a lock and only wait for their next statement.
        await asyncio.sleep(0)
    outcomes: list[service.Submission | errors.Problem]
    try:
        async with sessionmaker.begin() as session:
            outcomes = await service.submit_referrals(session, principal=principal, documents=prepared)
    except IntegrityError:
        # A concurrent request stored one of these jti first: one document (and transaction) at a time.
        outcomes = []
        for document in prepared:
            try:
                if isinstance(document, errors.Problem):
                    raise document
                outcomes.append(await _store_alone(sessionmaker, document))
            except errors.Problem as problem:
                outcomes.append(problem)
    now = utcnow()
    results = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, errors.Problem):
            body_of_problem = json.loads(problem_response(outcome, request).body)  # type: ignore[arg-type]
            results.append({"index": index, "status": outcome.status, "problem": body_of_problem})
            continue
        results.append(
            {"index": index, "status": 201 if outcome.created else 200, **_submission_body(outcome, now)}
        )
    return json_response({"results": results})


def _enum_query(request: web.Request, name: str, enum: type[Any]) -> Any:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return enum(raw)
    except ValueError as exc:
        allowed = ", ".join(member.value for member in enum)
        raise errors.BadRequest(f"{name} must be one of: {allowed}") from exc


def _time_query(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise errors.BadRequest(f"{name} must be an RFC 3339 date-time") from exc
    if moment.tzinfo is None:
        raise errors.BadRequest(f"{name} needs a time zone (e.g. Z)")
    return moment


@routes.get("/v1/referrals")
async def list_referrals(request: web.Request) -> web.Response:
    """The caller's referrals, newest first, with filters and a cursor."""
    principal = require_scope(request, "referrals:read")
    overdue_raw = request.query.get("overdue")
    if overdue_raw not in (None, "true", "false"):
        raise errors.BadRequest("overdue must be true or false")
    filters = service.ListFilters(
        type=_enum_query(request, "type", DocumentType),
        status=_enum_query(request, "status", Status),
        overdue=None if overdue_raw is None else overdue_raw == "true",
        received_from=_time_query(request, "from"),
        received_to=_time_query(request, "to"),
    )
    limit_raw = request.query.get("limit", "50")
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= service.MAX_PAGE_SIZE:
        raise errors.BadRequest(f"limit must be 1 to {service.MAX_PAGE_SIZE}")
    cursor = request.query.get("after")
    now = utcnow()
    async with request.app[sessionmaker_key].begin() as session:
        page, next_cursor = await service.list_referrals(
            session,
            principal=principal,
            filters=filters,
            after=service.decode_cursor(cursor) if cursor else None,
            limit=int(limit_raw),
            now=now,
            request_id=request_id(request),
        )
    return json_response({"referrals": views.summaries(page, now), "next": next_cursor})


@routes.get("/v1/referrals/{referral_id}")
async def get_referral(request: web.Request) -> web.Response:
    """One referral with its original JWS, status history and related referrals (an audited read)."""
    principal = require_scope(request, "referrals:read")
    now = utcnow()
    async with request.app[sessionmaker_key].begin() as session:
        referral, history, links = await service.read_referral(
            session,
            principal=principal,
            referral_id=request.match_info["referral_id"],
            at=now,
            request_id=request_id(request),
        )
    return json_response(views.detail(referral, history, links, now))


@routes.post("/v1/referrals/{referral_id}/statuses")
async def record_status(request: web.Request) -> web.Response:
    """Record a signed status update (provider) or a withdrawal or answer to questions (authority)."""
    principal = require_scope(request, "referrals:read")
    scope = "referrals:write" if "referrals:write" in principal.scopes else "statuses:write"
    require_scope(request, scope)
    compact = await _compact_from_body(request)
    recorded = await _once_more_on_race(
        request,
        lambda session, look_for_repeat: service.record_status(
            session,
            principal=principal,
            referral_id=request.match_info["referral_id"],
            compact=compact,
            received_at=utcnow(),
            receipts=request.app[receipt_signer_key],
            request_id=request_id(request),
            look_for_repeat=look_for_repeat,
        ),
    )
    now = utcnow()
    return json_response(
        {
            "referral": views.summary(recorded.referral, now),
            "status": views.status_view(recorded.status),
            "receipt": recorded.status.receipt,
        },
        status=201 if recorded.created else 200,
    )
