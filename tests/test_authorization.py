"""The authorization matrix, generated from the OpenAPI document.

Every operation, called with no token, with a token of every party kind, and with a token of a second party of
the owner's kind, answers 401/403/404 exactly where DESIGN.md §3 says (scopes from each operation's
``security``; tenancy for the objects in its path), and a refused call changes nothing in the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from referral.audit.sequencer import note_signer, sequence_pending
from referral.auth.principal import SCOPES_BY_KIND, PartyKind
from referral.config import Settings
from referral.core.appkeys import service_keys_key, sessionmaker_key, settings_key
from referral.models import metadata
from tests.auth.factories import TestParty, bearer, make_party, sign_document
from tests.referrals.test_api import referral_claims, status_claims, submit
from tests.test_openapi import OPENAPI_PATH

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Tables written by obtaining tokens (used assertions, audit of issuance) are compared from after that point.
# A party's current public keys are a directory every authenticated caller may read (to verify signatures).
DIRECTORY_OPERATIONS = frozenset({"getPartyJwks"})
CALLERS = ("authority", "authority2", "provider", "provider2", "observer", "operator")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    public: bool
    scope_sets: tuple[frozenset[str], ...]


def operations() -> list[Operation]:
    document = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    found = []
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            security = operation.get("security", document.get("security", []))
            found.append(
                Operation(
                    method=method,
                    path=path,
                    operation_id=operation["operationId"],
                    public=security == [] or {} in security,
                    scope_sets=tuple(
                        frozenset(requirement.get("bearerAuth", [])) for requirement in security
                    ),
                )
            )
    return found


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_background_tasks": False, "webhook_allow_private": True})


@dataclass
class World:
    parties: dict[str, TestParty]
    headers: dict[str, dict[str, str]]
    params: dict[str, str]
    owners: dict[str, set[str]]


@pytest.fixture
async def world(client: TestClient[Any, Any], aiohttp_server: Any) -> World:
    parties = {
        "authority": await make_party(client, kind="authority"),
        "authority2": await make_party(client, kind="authority"),
        "provider": await make_party(client, kind="provider"),
        "provider2": await make_party(client, kind="provider"),
        "observer": await make_party(client, kind="observer"),
        "operator": await make_party(client, kind="operator"),
    }
    authority, provider = parties["authority"], parties["provider"]
    status, body, _compact = await submit(client, authority, referral_claims(authority, provider))
    assert status == 201
    referral = body["referral"]

    async def accept(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hooks", accept)
    server = await aiohttp_server(receiver)
    provider_headers = await bearer(client, provider)
    response = await client.post(
        "/v1/webhooks", json={"url": str(server.make_url("/hooks"))}, headers=provider_headers
    )
    webhook = await response.json()
    ping = await client.post(f"/v1/webhooks/{webhook['id']}/ping", headers=provider_headers)
    delivery = await ping.json()

    headers = {name: await bearer(client, party) for name, party in parties.items()}
    app = client.server.app
    assert app is not None
    settings = app[settings_key]
    await sequence_pending(
        app[sessionmaker_key],
        signer=note_signer(app[service_keys_key].active, settings.audit_origin),
        origin=settings.audit_origin,
        batch_size=settings.audit_batch_size,
    )
    return World(
        parties=parties,
        headers=headers,
        params={
            "referral_id": referral["id"],
            "entry_id": referral["audit_entry_id"],
            "webhook_id": webhook["id"],
            "delivery_id": delivery["id"],
            "party_id": provider.party_id,
            "kid": provider.signing_kid,
            "client_id": provider.client_id,
            "name": "dashboard.js",
        },
        # Who may see each object (the others get 404, never a hint that it exists).
        owners={
            "referral_id": {"authority", "provider"},
            "entry_id": {"authority", "provider", "operator"},
            "webhook_id": {"provider"},
            "delivery_id": {"provider"},
            "party_id": {"provider", "operator"},
        },
    )


def allowed_by_scope(operation: Operation, kind: str) -> bool:
    scopes = SCOPES_BY_KIND[PartyKind(kind.rstrip("2"))]
    return any(required <= scopes for required in operation.scope_sets)


def expected_refusal(operation: Operation, caller: str | None, world: World) -> int | None:
    """The status DESIGN.md §3 prescribes for this caller, or None when the call is allowed."""
    if operation.public:
        return None
    if caller is None:
        return 401
    if not allowed_by_scope(operation, caller):
        return 403
    if operation.operation_id in DIRECTORY_OPERATIONS:
        return None
    for name in re.findall(r"{(\w+)}", operation.path):
        if name in world.owners and caller not in world.owners[name]:
            return 404
    return None


def request_body(operation: Operation, caller: str | None, world: World) -> dict[str, Any]:
    """A body that gets past parsing, so a refusal is about who calls, not about what was sent."""
    if operation.operation_id == "recordReferralStatus" and caller in world.parties:
        party = world.parties[caller]
        claims = status_claims(party, world.params["referral_id"], "acknowledged")
        return {"json": {"jws": sign_document(party, claims, typ="status+jws")}}
    if operation.method in ("post", "put", "patch"):
        return {"json": {}}
    return {}


async def row_counts(client: TestClient[Any, Any]) -> dict[str, int]:
    app = client.server.app
    assert app is not None
    async with app[sessionmaker_key]() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in metadata.sorted_tables
        }


def test_the_matrix_covers_every_operation() -> None:
    assert len(operations()) >= 30
    for operation in operations():
        assert operation.public or operation.scope_sets, (
            f"{operation.operation_id} says nothing about security"
        )


async def test_refusals_are_exactly_where_the_design_says_and_change_nothing(
    client: TestClient[Any, Any], world: World
) -> None:
    before = await row_counts(client)
    refused = 0
    for operation in operations():
        path = operation.path.format(**world.params)
        for caller in (None, *CALLERS):
            expected = expected_refusal(operation, caller, world)
            if expected is None:
                continue
            headers = world.headers[caller] if caller else {}
            response = await client.request(
                operation.method.upper(), path, headers=headers, **request_body(operation, caller, world)
            )
            assert response.status == expected, (operation.operation_id, caller, await response.text())
            assert response.content_type == "application/problem+json"
            refused += 1
    assert refused > 100
    assert await row_counts(client) == before, "a refused call wrote something"


async def test_allowed_callers_are_not_refused(client: TestClient[Any, Any], world: World) -> None:
    for operation in operations():
        if operation.method != "get":
            continue  # writes by allowed callers are the feature tests' business
        path = operation.path.format(**world.params)
        for caller in CALLERS:
            if operation.public or expected_refusal(operation, caller, world) is not None:
                continue
            response = await client.get(path, headers=world.headers[caller])
            assert response.status not in (401, 403, 404), (
                operation.operation_id,
                caller,
                await response.text(),
            )
