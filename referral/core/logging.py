"""structlog set-up: JSON outside a terminal, key=value console output on one."""

from __future__ import annotations

import logging
import sys

import structlog

from referral.config import Settings


def configure_logging(settings: Settings) -> None:
    """Route stdlib and structlog output through one renderer chosen by the settings."""
    render_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if render_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    level = getattr(logging, settings.log_level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by ours, which carries the request id and actor.
    logging.getLogger("aiohttp.access").disabled = True
    # Database drivers log statements with their parameters (signed documents, secrets) and authlib logs the
    # tokens it issues, at DEBUG and INFO: never let them through, whatever the level.
    for noisy in ("aiosqlite", "asyncpg", "sqlalchemy", "authlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # alembic narrates its plugin set-up at INFO; the CLI reports the outcome of a migration itself.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
