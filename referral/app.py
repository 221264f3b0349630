"""The application factory: every shared resource is created in ``cleanup_ctx`` under a typed key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from referral.apidocs.routes import routes as apidocs_routes
from referral.audit.routes import routes as audit_routes
from referral.audit.sequencer import sequencer_task
from referral.auth.middleware import auth_middleware
from referral.auth.routes import routes as auth_routes
from referral.auth.state import auth_context
from referral.config import Settings
from referral.core import service_keys
from referral.core.appkeys import engine_key, service_keys_key, sessionmaker_key, settings_key
from referral.core.db import create_engine, create_sessionmaker
from referral.core.idempotency import idempotency_middleware
from referral.core.migrations import ensure_schema_at_head
from referral.core.ratelimit import rate_limit_middleware, rate_limiter
from referral.core.web import request_context_middleware
from referral.feed.notifier import Notifier, notifier_key, notifier_listener
from referral.feed.outbox import NOTIFIER_KEY
from referral.feed.routes import feed_context
from referral.feed.routes import routes as feed_routes
from referral.health.routes import routes as health_routes
from referral.parties.routes import routes as party_routes
from referral.referrals.clock import clock_task
from referral.referrals.routes import referrals_context
from referral.referrals.routes import routes as referral_routes
from referral.reporting.dashboard import dashboard_context
from referral.reporting.dashboard import routes as dashboard_routes
from referral.reporting.pages import setup_templates
from referral.reporting.routes import routes as reporting_routes
from referral.webhooks.delivery import delivery_task, webhooks_context
from referral.webhooks.routes import routes as webhook_routes

log = structlog.get_logger("referral.app")


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    engine = create_engine(settings)
    try:
        if settings.check_schema:
            await ensure_schema_at_head(engine)
        app[engine_key] = engine
        app[sessionmaker_key] = create_sessionmaker(engine, info={NOTIFIER_KEY: app[notifier_key]})
        yield
    finally:
        await engine.dispose()


async def _service_keys(app: web.Application) -> AsyncIterator[None]:
    app[service_keys_key] = service_keys.load_or_create(app[settings_key].service_key_path)
    yield


def _shared_contexts(app: web.Application) -> None:
    """What API processes and workers both run: keys, database, wake-ups, background loops."""
    app[notifier_key] = Notifier()
    app.cleanup_ctx.append(_service_keys)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(notifier_listener)
    app.cleanup_ctx.append(webhooks_context)
    app.cleanup_ctx.append(sequencer_task)
    app.cleanup_ctx.append(clock_task)
    app.cleanup_ctx.append(delivery_task)


def create_worker_app(settings: Settings) -> web.Application:
    """The background work without the HTTP API: audit sequencer, referral clock and webhook delivery
    (``referral worker``; API processes then run with ``REFERRAL_RUN_BACKGROUND_TASKS=false``)."""
    app = web.Application()
    app[settings_key] = settings.model_copy(update={"run_background_tasks": True})
    _shared_contexts(app)
    return app


def create_app(settings: Settings) -> web.Application:
    """Build the web application for ``settings``; resources open on startup and close on cleanup."""
    app = web.Application(
        middlewares=[
            request_context_middleware,
            auth_middleware,
            rate_limit_middleware,
            idempotency_middleware,
        ],
        client_max_size=settings.body_limit,
    )
    app[settings_key] = settings
    rate_limiter(app)
    _shared_contexts(app)
    app.cleanup_ctx.append(auth_context)
    app.cleanup_ctx.append(referrals_context)
    app.cleanup_ctx.append(feed_context)
    app.cleanup_ctx.append(dashboard_context)
    setup_templates(app)
    app.router.add_routes(health_routes)
    app.router.add_routes(apidocs_routes)
    app.router.add_routes(audit_routes)
    app.router.add_routes(auth_routes)
    app.router.add_routes(party_routes)
    app.router.add_routes(referral_routes)
    app.router.add_routes(feed_routes)
    app.router.add_routes(webhook_routes)
    app.router.add_routes(reporting_routes)
    app.router.add_routes(dashboard_routes)
    return app
