"""``referral parties|keys|clients|operator``: the operator's command line, same effect as the API."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from referral.config import Settings
from referral.core import errors

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
KEY_FILE_MODE = 0o600


def _in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from referral.core.db import create_engine, create_sessionmaker
    from referral.core.migrations import ensure_schema_at_head

    async def run() -> T:
        engine = create_engine(settings)
        try:
            await ensure_schema_at_head(engine)
            async with create_sessionmaker(engine).begin() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document))


def _fail(problem: errors.Problem) -> int:
    print(f"error: {problem.detail}", file=sys.stderr)
    for error in problem.extensions.get("errors", []):
        print(f"  {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
    return 1


def _read_jwk(path: str) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise errors.BadRequest(f"cannot read a JWK from {path}: {exc}") from exc


def _timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2027-01-01T00:00:00Z")
    return moment


def _parties_add(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from referral.parties import service
    from referral.parties.schemas import PartyCreate, validation_errors

    try:
        body = PartyCreate(kind=args.kind, name=args.name, country=args.country, contact=args.contact)
    except ValidationError as exc:
        return _fail(errors.ValidationFailed("invalid party", errors=validation_errors(exc)))

    async def work(session: AsyncSession) -> str:
        party = await service.create_party(
            session,
            kind=body.kind,
            name=body.name,
            country=body.country,
            contact=body.contact,
            actor=service.CLI_ACTOR,
        )
        return party.id

    _print({"id": _in_transaction(settings, work)})
    return 0


def _keys_add(args: argparse.Namespace, settings: Settings) -> int:
    from referral.parties import service

    async def work(session: AsyncSession) -> str:
        key = await service.add_key(
            session,
            party_id=args.party,
            jwk=_read_jwk(args.jwk),
            not_before=args.not_before,
            not_after=args.not_after,
            actor=service.CLI_ACTOR,
        )
        return key.kid

    try:
        _print({"kid": _in_transaction(settings, work)})
    except errors.Problem as problem:
        return _fail(problem)
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from referral.parties import service

    async def work(session: AsyncSession) -> dict[str, Any]:
        key = await service.revoke_key(
            session, party_id=args.party, kid=args.kid, reason=args.reason, actor=service.CLI_ACTOR
        )
        return {"kid": key.kid, "revoked_at": service.key_document(key)["revoked_at"]}

    try:
        _print(_in_transaction(settings, work))
    except errors.Problem as problem:
        return _fail(problem)
    return 0


def _clients_add(args: argparse.Namespace, settings: Settings) -> int:
    from referral.parties import service

    async def work(session: AsyncSession) -> str:
        client = await service.add_client(
            session, party_id=args.party, jwk=_read_jwk(args.jwk), name=args.name, actor=service.CLI_ACTOR
        )
        return client.id

    try:
        _print({"client_id": _in_transaction(settings, work)})
    except errors.Problem as problem:
        return _fail(problem)
    return 0


def _clients_disable(args: argparse.Namespace, settings: Settings) -> int:
    from referral.parties import service

    async def work(session: AsyncSession) -> dict[str, Any]:
        client = await service.disable_client(
            session, party_id=args.party, client_id=args.client, reason=args.reason, actor=service.CLI_ACTOR
        )
        return {"client_id": client.id, "disabled_at": service.client_document(client)["disabled_at"]}

    try:
        _print(_in_transaction(settings, work))
    except errors.Problem as problem:
        return _fail(problem)
    return 0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _write_private_key(path: Path) -> dict[str, str]:
    """Generate an Ed25519 key, write its private JWK to a new 0600 file, return the public JWK."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from referral.core.service_keys import jwk_thumbprint, raw_public_bytes

    private_key = Ed25519PrivateKey.generate()
    public = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(raw_public_bytes(private_key.public_key())),
        "kid": jwk_thumbprint(private_key.public_key()),
        "alg": "EdDSA",
        "use": "sig",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({**public, "d": _b64url(private_key.private_bytes_raw())}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    return public


def _operator_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from referral.parties import service

    key_file = Path(args.key_file) if args.key_file else settings.var_dir / "operator-key.json"
    if key_file.exists():
        print(f"error: {key_file} exists; refusing to overwrite a private key", file=sys.stderr)
        return 1

    async def work(session: AsyncSession) -> dict[str, str]:
        if await service.operator_exists(session):
            raise errors.Conflict("an operator party exists already; add clients with `referral clients add`")
        public_jwk = _write_private_key(key_file)
        party = await service.create_party(
            session,
            kind="operator",
            name=args.name,
            country=args.country,
            contact=None,
            actor=service.CLI_ACTOR,
        )
        client = await service.add_client(
            session, party_id=party.id, jwk=public_jwk, name="bootstrap", actor=service.CLI_ACTOR
        )
        return {"party_id": party.id, "client_id": client.id, "kid": client.kid, "key_file": str(key_file)}

    try:
        result = _in_transaction(settings, work)
    except errors.Problem as problem:
        return _fail(problem)
    except BaseException:
        key_file.unlink(missing_ok=True)
        raise
    _print(result)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``parties``, ``keys``, ``clients`` and ``operator`` commands."""
    parties = commands.add_parser("parties", help="manage parties")
    parties_actions = parties.add_subparsers(dest="parties_command", required=True, metavar="ACTION")
    add_party = parties_actions.add_parser("add", help='register a party; prints {"id": ...}')
    add_party.add_argument("--kind", required=True, choices=["authority", "provider", "observer", "operator"])
    add_party.add_argument("--name", required=True)
    add_party.add_argument("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. DE")
    add_party.add_argument("--contact")
    add_party.set_defaults(run=_parties_add)

    keys = commands.add_parser("keys", help="manage the public signing keys of parties")
    keys_actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add_key = keys_actions.add_parser("add", help='register a public JWK; prints {"kid": ...}')
    add_key.add_argument("--party", required=True)
    add_key.add_argument("--jwk", required=True, help="file holding the public JWK (JSON)")
    add_key.add_argument("--not-before", type=_timestamp, help="RFC 3339 time the key becomes valid")
    add_key.add_argument("--not-after", type=_timestamp, help="RFC 3339 time the key stops being valid")
    add_key.set_defaults(run=_keys_add)
    revoke_key = keys_actions.add_parser("revoke", help="revoke a key for good")
    revoke_key.add_argument("--party", required=True)
    revoke_key.add_argument("--kid", required=True)
    revoke_key.add_argument("--reason", required=True)
    revoke_key.set_defaults(run=_keys_revoke)

    clients = commands.add_parser("clients", help="manage API clients of parties")
    clients_actions = clients.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    add_client = clients_actions.add_parser("add", help='register an API client; prints {"client_id": ...}')
    add_client.add_argument("--party", required=True)
    add_client.add_argument("--jwk", required=True, help="file holding the client's public JWK (JSON)")
    add_client.add_argument("--name")
    add_client.set_defaults(run=_clients_add)
    disable_client = clients_actions.add_parser("disable", help="disable a client; its tokens stop working")
    disable_client.add_argument("--party", required=True)
    disable_client.add_argument("--client", required=True)
    disable_client.add_argument("--reason", required=True)
    disable_client.set_defaults(run=_clients_disable)

    operator = commands.add_parser("operator", help="set up the service's operator")
    operator_actions = operator.add_subparsers(dest="operator_command", required=True, metavar="ACTION")
    bootstrap = operator_actions.add_parser(
        "bootstrap", help="create the first operator party and client; writes its private key (0600)"
    )
    bootstrap.add_argument("--name", default="Operator")
    bootstrap.add_argument("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. DE")
    bootstrap.add_argument(
        "--key-file", help="where to write the private JWK (default: VAR_DIR/operator-key.json)"
    )
    bootstrap.set_defaults(run=_operator_bootstrap)
