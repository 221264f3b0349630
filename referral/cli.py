"""The ``referral`` command: serve the API, manage the database schema, and operate the service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from referral import __version__, demo
from referral.audit import cli as audit_cli
from referral.auth import cli as auth_cli
from referral.client import cli as client_cli
from referral.config import Settings
from referral.core.logging import configure_logging
from referral.parties import cli as parties_cli

Command = Callable[[argparse.Namespace, Settings], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

FEATURE_COMMANDS: list[Registrar] = [
    audit_cli.register,
    auth_cli.register,
    parties_cli.register,
    demo.register,
    client_cli.register,
]


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from referral.app import create_app

    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key)) is not None}
    settings = settings.model_copy(update=overrides)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=lambda message: print(message, file=sys.stderr),
        loop=loop,
    )
    return 0


def _worker(_args: argparse.Namespace, settings: Settings) -> int:
    import signal

    import structlog
    from aiohttp import web

    from referral.app import create_worker_app

    async def work() -> None:
        runner = web.AppRunner(create_worker_app(settings), handle_signals=False)
        await runner.setup()  # starts the background loops; no socket is opened
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stopping.set)
        structlog.get_logger("referral.worker").info("worker_started")
        try:
            await stopping.wait()
        finally:
            await runner.cleanup()
        structlog.get_logger("referral.worker").info("worker_stopped")

    _ensure_sqlite_directory(settings)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        asyncio.run(work())
    else:
        uvloop.run(work())
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from referral.core import migrations
    from referral.core.db import create_engine

    _ensure_sqlite_directory(settings)
    if args.db_command == "upgrade":
        migrations.upgrade(settings.database_url, args.revision)
        args.db_command = "current"
    elif args.db_command == "downgrade":
        migrations.downgrade(settings.database_url, args.revision)
        args.db_command = "current"
    if args.db_command in {"current", "check"}:

        async def current() -> str | None:
            engine = create_engine(settings)
            try:
                return await migrations.current_revision(engine)
            finally:
                await engine.dispose()

        revision = asyncio.run(current())
        head = migrations.head_revision()
        state = "at head" if revision == head else f"behind head {head}: {migrations.UPGRADE_HINT}"
        print(f"{revision or 'none'} ({state})")
        if args.db_command == "check" and revision != head:
            return 1
    return 0


def _ensure_sqlite_directory(settings: Settings) -> None:
    """Create the folder of an embedded SQLite database so a fresh checkout works without set-up."""
    if settings.is_sqlite and ":///" in settings.database_url:
        from pathlib import Path

        path = Path(settings.database_url.split(":///", 1)[1])
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="referral", description=__doc__)
    parser.add_argument("--version", action="version", version=f"referral {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="address to listen on (REFERRAL_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (REFERRAL_PORT)")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker", help="run the audit sequencer, referral clock and webhook delivery without the HTTP API"
    )
    worker.set_defaults(run=_worker)

    db = commands.add_parser("db", help="manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema up (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate the schema down (default: one step)")
    downgrade.add_argument("revision", nargs="?", default="-1")
    db_commands.add_parser("current", help="print the schema revision of the database")
    db_commands.add_parser("check", help="exit non-zero unless the schema is at head")
    db.set_defaults(run=_db)

    # Each feature adds its own sub-commands; they run with the same settings object.
    for register in FEATURE_COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``referral`` console script."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    run: Command = args.run
    return run(args, settings)
