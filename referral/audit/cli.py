"""``referral audit fsck`` and ``referral audit verify``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path

from referral.client.cli import add_prove_command
from referral.config import Settings


def _fsck(_args: argparse.Namespace, settings: Settings) -> int:
    from referral.audit.fsck import fsck
    from referral.core import service_keys
    from referral.core.db import create_engine, create_sessionmaker

    async def run() -> int:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                report = await fsck(
                    session,
                    keys=service_keys.load_or_create(settings.service_key_path),
                    origin=settings.audit_origin,
                )
        finally:
            await engine.dispose()
        summary = {
            "ok": report.ok,
            "leaves": report.leaves,
            "checkpoints": report.checkpoints,
            "first_bad_index": report.first_bad_index,
            "problems": report.problems,
        }
        print(json.dumps(summary, indent=2))
        if not report.ok:
            print(f"audit log check FAILED at leaf index {report.first_bad_index}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(run())


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from referral.audit.verify import VerificationFailed, verify_service

    state = Path(args.state) if args.state else settings.var_dir / "audit-verify-state.json"
    token = args.token or os.environ.get("REFERRAL_ACCESS_TOKEN")
    try:
        result = asyncio.run(verify_service(args.url, state_path=state, vkey=args.vkey, token=token))
    except VerificationFailed as exc:
        print(f"audit log verification FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "ok": True,
                "origin": result.origin,
                "tree_size": result.tree_size,
                "root_hash": base64.b64encode(result.root_hash).decode(),
                "consistent_with_size": result.previous_size,
            },
            indent=2,
        )
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``referral audit ...``."""
    audit = commands.add_parser("audit", help="check the tamper-evident audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = actions.add_parser("fsck", help="re-check the whole log from the database")
    check.set_defaults(run=_fsck)
    verify = actions.add_parser("verify", help="verify a running service's checkpoints over the API")
    verify.add_argument("--url", required=True, help="base URL of the service")
    verify.add_argument("--vkey", help="the log's verifier key (default: pinned on first use)")
    verify.add_argument("--state", help="state file of the last verified checkpoint")
    verify.add_argument("--token", help="bearer access token (default: $REFERRAL_ACCESS_TOKEN)")
    verify.set_defaults(run=_verify)
    add_prove_command(actions)
