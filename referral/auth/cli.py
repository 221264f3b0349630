"""``referral service-key rotate``: retire the service's active signing key and start a new one."""

from __future__ import annotations

import argparse
import json
import sys

from referral.config import Settings


def _rotate(_args: argparse.Namespace, settings: Settings) -> int:
    from referral.core import service_keys

    ring = service_keys.rotate(settings.service_key_path)
    print(
        json.dumps(
            {
                "active": ring.active.kid,
                "retired": [key.kid for key in ring.keys if key.retired_at is not None],
            }
        )
    )
    print("restart the API processes so that they sign with the new key", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``service-key`` command."""
    service_key = commands.add_parser("service-key", help="manage the service's own signing keys")
    actions = service_key.add_subparsers(dest="service_key_command", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate", help="retire the active key (still published to verify old signatures) and create a new one"
    )
    rotate.set_defaults(run=_rotate)
