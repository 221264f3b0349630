"""``/v1/parties``: the directory for every party; party, key and client administration for operators."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from referral.auth.principal import Principal, authenticated, require_scope
from referral.auth.tenancy import ADMIN_SCOPE, ensure_visible
from referral.core.appkeys import sessionmaker_key
from referral.core.timeutil import utcnow
from referral.core.web import json_response, request_id
from referral.parties import service
from referral.parties.models import Party, PartyKey
from referral.parties.schemas import ClientCreate, KeyCreate, PartyCreate, Revocation, parse_body

routes = web.RouteTableDef()


def _actor(request: web.Request, principal: Principal) -> service.Actor:
    return service.Actor(
        party_id=principal.party_id, client_id=principal.client_id, request_id=request_id(request)
    )


def _directory_entry(party: Party, keys: list[PartyKey]) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": party.id,
        "kind": party.kind,
        "name": party.name,
        "country": party.country,
        "keys": [
            {
                "kid": key.kid,
                "alg": key.alg,
                "not_before": service.key_document(key)["not_before"],
                "not_after": service.key_document(key)["not_after"],
                "current": service.key_is_current(key, now),
            }
            for key in keys
            if key.revoked_at is None
        ],
    }


@routes.get("/v1/parties")
async def list_parties(request: web.Request) -> web.Response:
    """The directory: every party's name, kind, country and keys, readable by every authenticated party."""
    authenticated(request)
    async with request.app[sessionmaker_key]() as session:
        parties = await service.list_parties(session)
    return json_response({"items": [_directory_entry(party, keys) for party, keys in parties]})


@routes.post("/v1/parties")
async def create_party(request: web.Request) -> web.Response:
    """Register a party (operators)."""
    principal = require_scope(request, ADMIN_SCOPE)
    body = await parse_body(request, PartyCreate)
    async with request.app[sessionmaker_key].begin() as session:
        party = await service.create_party(
            session,
            kind=body.kind,
            name=body.name,
            country=body.country,
            contact=body.contact,
            actor=_actor(request, principal),
        )
    return json_response(
        {**service.party_document(party), "keys": [], "clients": []},
        status=201,
        headers={"Location": f"/v1/parties/{party.id}"},
    )


@routes.get("/v1/parties/{party_id}")
async def get_party(request: web.Request) -> web.Response:
    """A party's full record with its keys and clients: to itself and to operators; 404 to anyone else."""
    principal = authenticated(request)
    party_id = request.match_info["party_id"]
    ensure_visible(principal, [party_id], what="party", operators_see_all=True)
    async with request.app[sessionmaker_key]() as session:
        detail = await service.party_detail(session, party_id=party_id)
    return json_response(
        {
            **service.party_document(detail.party),
            "keys": [service.key_document(key) for key in detail.keys],
            "clients": [service.client_document(client) for client in detail.clients],
        }
    )


@routes.get("/v1/parties/{party_id}/jwks")
async def get_party_jwks(request: web.Request) -> web.Response:
    """The party's currently valid public signing keys as a JWK Set, to verify what it signs."""
    authenticated(request)
    async with request.app[sessionmaker_key]() as session:
        keys = await service.current_keys(session, party_id=request.match_info["party_id"], at=utcnow())
    return json_response({"keys": [dict(key.jwk) for key in keys]})


@routes.post("/v1/parties/{party_id}/keys")
async def add_key(request: web.Request) -> web.Response:
    """Register a public signing key of the party (operators)."""
    principal = require_scope(request, ADMIN_SCOPE)
    body = await parse_body(request, KeyCreate)
    party_id = request.match_info["party_id"]
    async with request.app[sessionmaker_key].begin() as session:
        key = await service.add_key(
            session,
            party_id=party_id,
            jwk=body.jwk,
            not_before=body.not_before,
            not_after=body.not_after,
            actor=_actor(request, principal),
        )
    return json_response(service.key_document(key), status=201)


@routes.delete("/v1/parties/{party_id}/keys/{kid}")
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a party's key with a reason (operators); documents signed with it are refused from then on."""
    principal = require_scope(request, ADMIN_SCOPE)
    body = await parse_body(request, Revocation)
    async with request.app[sessionmaker_key].begin() as session:
        key = await service.revoke_key(
            session,
            party_id=request.match_info["party_id"],
            kid=request.match_info["kid"],
            reason=body.reason,
            actor=_actor(request, principal),
        )
    return json_response(service.key_document(key))


@routes.post("/v1/parties/{party_id}/clients")
async def add_client(request: web.Request) -> web.Response:
    """Register an API client of the party with its public key for ``private_key_jwt`` (operators)."""
    principal = require_scope(request, ADMIN_SCOPE)
    body = await parse_body(request, ClientCreate)
    async with request.app[sessionmaker_key].begin() as session:
        client = await service.add_client(
            session,
            party_id=request.match_info["party_id"],
            jwk=body.jwk,
            name=body.name,
            actor=_actor(request, principal),
        )
    return json_response(service.client_document(client), status=201)


@routes.delete("/v1/parties/{party_id}/clients/{client_id}")
async def disable_client(request: web.Request) -> web.Response:
    """Disable an API client with a reason (operators): its tokens stop working."""
    principal = require_scope(request, ADMIN_SCOPE)
    body = await parse_body(request, Revocation)
    async with request.app[sessionmaker_key].begin() as session:
        client = await service.disable_client(
            session,
            party_id=request.match_info["party_id"],
            client_id=request.match_info["client_id"],
            reason=body.reason,
            actor=_actor(request, principal),
        )
    return json_response(service.client_document(client))
