"""``Idempotency-Key`` on every authenticated POST: a retried request gets the first response again.

The key is scoped to the calling API client and bound to a hash of the method, path and body: the same key
with another request is refused (422). The first request claims the key before it runs, so a concurrent
duplicate is told to retry (409) instead of running twice. Responses under 500 are kept for a day; a 5xx
releases the key so the client can retry, and so does a crash: a claim whose request never finished is taken
over once it is older than ``idempotency_claim_timeout_seconds`` (no request runs that long). The state
change itself and the stored response are two transactions: a crash between them leaves the key released,
and the retry is then caught by the document's own ``jti`` (signed documents) or re-executes (operator
calls, whose effects are audited).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from typing import Any, cast

from aiohttp import web
from sqlalchemy import Integer, LargeBinary, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from referral.auth.principal import principal_key
from referral.core import errors
from referral.core.appkeys import sessionmaker_key, settings_key
from referral.core.db import Base
from referral.core.timeutil import utcnow
from referral.core.web import Handler, problem_response

HEADER = "Idempotency-Key"
RETENTION = timedelta(hours=24)
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_REPLAYED_HEADERS = ("Location", "Retry-After")


class IdempotencyRecord(Base):
    """A claimed idempotency key and, once the first request finished, its response."""

    __tablename__ = "idempotency_keys"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    status: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(100))
    location: Mapped[str | None] = mapped_column(String(2048))
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


_records = cast(Table, IdempotencyRecord.__table__)


class KeyReused(errors.Problem):
    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class KeyInProgress(errors.Conflict):
    slug = "idempotency-key-in-progress"
    title = "Request with this idempotency key in progress"


def _replay(record: IdempotencyRecord) -> web.Response:
    response = web.Response(body=record.body, status=record.status or 200, content_type=None)
    response.headers["Content-Type"] = record.content_type or "application/json"
    if record.location:
        response.headers["Location"] = record.location
    response.headers["Idempotent-Replayed"] = "true"
    return response


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply ``Idempotency-Key`` to authenticated POSTs."""
    key = request.headers.get(HEADER)
    principal = request.get(principal_key)
    if request.method != "POST" or key is None or principal is None:
        return await handler(request)
    if not _VALID_KEY.fullmatch(key):
        raise errors.BadRequest(f"{HEADER} must be 1 to 255 visible ASCII characters")
    body = await request.read()
    fingerprint = hashlib.sha256(f"{request.method} {request.path_qs}\n".encode() + body).hexdigest()
    sessionmaker = request.app[sessionmaker_key]
    now = utcnow()
    abandoned = now - timedelta(seconds=request.app[settings_key].idempotency_claim_timeout_seconds)
    where = (_records.c.client_id == principal.client_id) & (_records.c.key == key)
    try:
        async with sessionmaker.begin() as session:
            # Forget an expired record, or the claim of a request that died before it could finish.
            await session.execute(
                delete(_records).where(
                    where,
                    (_records.c.created_at < now - RETENTION)
                    | (_records.c.status.is_(None) & (_records.c.created_at < abandoned)),
                )
            )
            await session.execute(
                insert(_records).values(
                    client_id=principal.client_id, key=key, request_sha256=fingerprint, created_at=now
                )
            )
    except IntegrityError:
        async with sessionmaker() as session:
            record = (await session.execute(select(IdempotencyRecord).where(where))).scalar_one_or_none()
        if record is None:
            raise KeyInProgress("the key was just released; retry", headers={"Retry-After": "1"}) from None
        if record.request_sha256 != fingerprint:
            raise KeyReused(f"this {HEADER} was used for a different request") from None
        if record.status is None:
            raise KeyInProgress(
                "the first request with this key is still running", headers={"Retry-After": "1"}
            ) from None
        return _replay(record)

    try:
        response = await handler(request)
    except errors.Problem as problem:
        response = problem_response(problem, request)
    except BaseException:
        async with sessionmaker.begin() as session:
            await session.execute(delete(_records).where(where))
        raise
    await _settle(request, response, where)
    return response


async def _settle(request: web.Request, response: web.StreamResponse, where: Any) -> None:
    async with request.app[sessionmaker_key].begin() as session:
        if response.status >= 500 or not isinstance(response, web.Response):
            await session.execute(delete(_records).where(where))
            return
        await session.execute(
            update(_records)
            .where(where)
            .values(
                status=response.status,
                content_type=response.headers.get("Content-Type"),
                location=response.headers.get("Location"),
                body=bytes(response.body) if isinstance(response.body, bytes | bytearray) else b"",
            )
        )
