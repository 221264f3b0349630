"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (the database is reachable and current)."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from referral.core import errors
from referral.core.appkeys import engine_key
from referral.core.migrations import UPGRADE_HINT, current_revision, head_revision
from referral.core.web import json_response

log = structlog.get_logger("referral.health")
routes = web.RouteTableDef()

READINESS_TIMEOUT_SECONDS = 2.0


@routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    """The process is up and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers within a short time and its schema is at the code's head."""
    engine = request.app[engine_key]
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            current = await current_revision(engine)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("readiness_database_unreachable", error=type(exc).__name__)
        raise errors.ServiceUnavailable("the database is unreachable", headers={"Retry-After": "5"}) from exc
    head = head_revision()
    if current != head:
        raise errors.ServiceUnavailable(
            f"database schema is at {current or 'none'}, the code needs {head}: {UPGRADE_HINT}",
            headers={"Retry-After": "30"},
        )
    return json_response({"status": "ready", "schema": head})
