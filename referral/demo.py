"""``referral demo``: seed a living demo system (an authority, a provider, an observer) for a new user.

Each party gets a signing key and an API client whose private JWKs are written under ``var/demo/`` (0600),
and a handful of signed referrals and statuses go through the same verification path as API requests.
Running it again does nothing once the demo exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import OKPKey

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.auth.principal import SCOPES_BY_KIND, PartyKind, Principal
from referral.config import Settings
from referral.core import migrations, service_keys
from referral.core.canonical import canonical_json
from referral.core.db import create_engine, create_sessionmaker
from referral.core.ids import new_id
from referral.core.timeutil import utcnow
from referral.parties import service as parties
from referral.referrals import service as referrals
from referral.referrals.signed import REFERRAL_TYP, STATUS_TYP, ReceiptSigner

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "api" / "examples"


@dataclass(frozen=True)
class DemoParty:
    """A seeded party with its private keys."""

    kind: PartyKind
    party_id: str
    signing_key: OKPKey
    kid: str
    client_id: str
    client_key: OKPKey

    def principal(self) -> Principal:
        """The principal its API client would have."""
        return Principal(self.party_id, self.kind, self.client_id, SCOPES_BY_KIND[self.kind], "demo")

    def sign(self, claims: dict[str, Any], typ: str) -> str:
        """A compact JWS of ``claims`` with this party's signing key."""
        header = {"alg": "EdDSA", "typ": typ, "kid": self.kid}
        return jws.serialize_compact(
            header,
            canonical_json(claims),
            self.signing_key,
            algorithms=list(ALGORITHMS),
            registry=JWS_REGISTRY,
        )


def _write_private(path: Path, document: dict[str, Any]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)


async def _seed_party(
    session: Any,
    *,
    kind: PartyKind,
    name: str,
    country: str,
    credentials: dict[Path, dict[str, Any]],
    directory: Path,
) -> DemoParty:
    signing_key = OKPKey.generate_key("Ed25519")
    client_key = OKPKey.generate_key("Ed25519")
    party = await parties.create_party(
        session,
        kind=kind.value,
        name=name,
        country=country,
        contact=f"{kind.value}@example.org",
        actor=parties.CLI_ACTOR,
    )
    key = await parties.add_key(
        session,
        party_id=party.id,
        jwk=signing_key.as_dict(private=False),
        not_before=None,
        not_after=None,
        actor=parties.CLI_ACTOR,
    )
    client = await parties.add_client(
        session,
        party_id=party.id,
        jwk=client_key.as_dict(private=False),
        name=f"{name} demo client",
        actor=parties.CLI_ACTOR,
    )
    credentials[directory / f"{kind.value}.json"] = {
        "party_id": party.id,
        "kind": kind.value,
        "name": name,
        "client_id": client.id,
        "client_key": {**client_key.as_dict(private=True), "kid": client.kid},
        "signing_key": {**signing_key.as_dict(private=True), "kid": key.kid},
    }
    return DemoParty(kind, party.id, signing_key, key.kid, client.id, client_key)


def _example(name: str, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    # The examples carry fixed dates; the demo's documents are signed now, so dates tied to iat go.
    for dated in ("deadline", "confidentiality", "effective_at"):
        claims.pop(dated, None)
    claims.update(iat=int(time.time()), jti=new_id(), **changes)
    return claims


async def seed(settings: Settings) -> Path | None:
    """Seed the demo into the configured database; ``None`` when it exists already."""
    directory = settings.var_dir / "demo"
    if (directory / "provider.json").exists():
        return None
    credentials: dict[Path, dict[str, Any]] = {}
    receipts = ReceiptSigner(service_keys.load_or_create(settings.service_key_path))
    engine = create_engine(settings)
    try:
        await migrations.ensure_schema_at_head(engine)
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker.begin() as session:
            authority = await _seed_party(
                session,
                kind=PartyKind.AUTHORITY,
                name="Demo Referral Unit",
                country="DE",
                credentials=credentials,
                directory=directory,
            )
            provider = await _seed_party(
                session,
                kind=PartyKind.PROVIDER,
                name="Demo Video Platform",
                country="IE",
                credentials=credentials,
                directory=directory,
            )
            await _seed_party(
                session,
                kind=PartyKind.OBSERVER,
                name="Demo Oversight Forum",
                country="AT",
                credentials=credentials,
                directory=directory,
            )
        base = {"iss": authority.party_id, "addressee": provider.party_id}
        documents = [
            _example("removal_order", **base),
            _example("referral", **base),
            _example("preservation_request", **base),
            _example("removal_order", **base, case_reference="DEMO-OPEN-1"),
        ]
        steps = [
            ["acknowledged", "action_taken"],
            ["acknowledged", "in_review"],
            ["acknowledged", "preserved"],
            [],
        ]
        for document, statuses in zip(documents, steps, strict=True):
            async with sessionmaker.begin() as session:
                submission = await referrals.submit_referral(
                    session,
                    principal=authority.principal(),
                    compact=authority.sign(document, REFERRAL_TYP),
                    received_at=utcnow(),
                    receipts=receipts,
                    request_id="demo",
                )
            for status in statuses:
                claims = _example(
                    f"status-{status}", iss=provider.party_id, referral_id=submission.referral.id
                )
                if "preserved_until" in claims:
                    claims["preserved_until"] = f"{utcnow().year + 1}-01-01T00:00:00Z"
                async with sessionmaker.begin() as session:
                    await referrals.record_status(
                        session,
                        principal=provider.principal(),
                        referral_id=submission.referral.id,
                        compact=provider.sign(claims, STATUS_TYP),
                        received_at=utcnow(),
                        receipts=receipts,
                        request_id="demo",
                    )
    finally:
        await engine.dispose()
    # Written last: the credentials exist only once everything they refer to was committed.
    directory.mkdir(parents=True, exist_ok=True)
    for path, document in credentials.items():
        _write_private(path, document)
    return directory


def _demo(_args: argparse.Namespace, settings: Settings) -> int:
    directory = asyncio.run(seed(settings))
    if directory is None:
        print(f"demo already seeded: credentials in {settings.var_dir / 'demo'}")
    else:
        print(f"demo seeded: an authority, a provider and an observer; credentials in {directory}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``referral demo``."""
    demo = commands.add_parser("demo", help="seed a demo authority, provider and observer with referrals")
    demo.set_defaults(run=_demo)
