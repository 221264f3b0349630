"""HTTP plumbing shared by every feature: request ids, problem+json errors, access log, JSON helpers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import exc as sa_exc

from referral.core import errors, jsontext
from referral.core.appkeys import settings_key
from referral.core.ids import new_id

log = structlog.get_logger("referral.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
# A client-supplied id is echoed only when it cannot smuggle anything into logs or headers.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
request_id_key = web.RequestKey("request_id", str)

_HTTP_PROBLEMS: dict[int, type[errors.Problem]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    406: errors.NotAcceptable,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    429: errors.TooManyRequests,
    503: errors.ServiceUnavailable,
}


def request_id(request: web.Request) -> str:
    """The id of the request being served."""
    rid: str = request.get(request_id_key, "")
    return rid


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response serialised compactly."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def problem_response(problem: errors.Problem, request: web.Request) -> web.Response:
    """The problem+json rendering of ``problem`` for ``request``."""
    body = problem.body(instance=request.path, request_id=request_id(request) or None)
    response = web.Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status=problem.status,
        content_type=errors.PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )
    if isinstance(problem, errors.MethodNotAllowed) and "Allow" not in response.headers:
        response.headers["Allow"] = problem.extensions.get("allow", "")
    return response


async def json_body(request: web.Request) -> Any:
    """The request body parsed as JSON (already read under the body timeout); 400 for anything that is not
    JSON or carries NUL characters."""
    try:
        body = jsontext.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}"[:200]) from exc
    if jsontext.has_nul(body):
        raise errors.BadRequest("NUL characters are not accepted in JSON strings")
    return body


def _body_too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", limit=limit)


def _problem_from_http_exception(exc: web.HTTPException, body_limit: int) -> errors.Problem:
    problem_class = _HTTP_PROBLEMS.get(exc.status, errors.Problem)
    headers = {key: value for key, value in exc.headers.items() if key in {"Allow", "Retry-After"}}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return errors.MethodNotAllowed(
            f"{exc.method} is not allowed here; allowed: {allowed}", headers={"Allow": allowed}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _body_too_large(body_limit)
    if isinstance(exc, web.HTTPNotFound):
        return errors.NotFound("no resource at this address")
    if problem_class is errors.Problem:
        problem = errors.Problem(exc.reason)
        problem.status = exc.status  # type: ignore[misc]
        return problem
    return problem_class(
        exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None, headers=headers
    )


def _database_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (a 503, retry later) rather than a bug."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


async def _read_body_in_time(request: web.Request) -> None:
    """Read the whole body now, within the timeout, so a client trickling bytes (slowloris) cannot hold a
    handler, a database connection or a lock; handlers then get the cached bytes from ``request.read()``."""
    timeout = request.app[settings_key].body_read_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            await request.read()
    except TimeoutError as exc:
        raise errors.RequestTimeout(f"the request body did not arrive within {timeout:g} s") from exc


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id, render every error as problem+json, and write one access-log line."""
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    rid = supplied if _SANE_REQUEST_ID.fullmatch(supplied) else new_id()
    request[request_id_key] = rid
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    body_limit = request.app[settings_key].body_limit
    try:
        if request.content_length is not None and request.content_length > body_limit:
            # Refuse before reading a byte of a body announced too large.
            raise _body_too_large(body_limit)
        if request.body_exists:
            await _read_body_in_time(request)
        response = await handler(request)
    except errors.Problem as problem:
        response = problem_response(problem, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        response = problem_response(_problem_from_http_exception(exc, body_limit), request)
    except Exception as exc:
        if _database_unavailable(exc):
            log.warning("database_unavailable", error=type(exc).__name__, path=request.path)
            response = problem_response(
                errors.ServiceUnavailable(
                    "the database is unavailable; retry later (a retry with the same jti or Idempotency-Key "
                    "cannot record anything twice)",
                    headers={"Retry-After": "5"},
                ),
                request,
            )
        else:
            log.exception("request_failed", method=request.method, path=request.path)
            response = problem_response(errors.InternalError("an unexpected error occurred"), request)
    response.headers[REQUEST_ID_HEADER] = rid
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=response.status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        remote=request.remote,
    )
    return response
