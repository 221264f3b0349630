"""``/v1/audit/*``: checkpoints, the verifier key, entries and proofs (DESIGN.md §6)."""

from __future__ import annotations

import base64

from aiohttp import web
from sqlalchemy import select

from referral.audit import proofs
from referral.audit.models import AuditCheckpoint
from referral.audit.sequencer import latest_checkpoint, note_signer
from referral.audit.service import entry_document, get_entry
from referral.auth.principal import PartyKind, authenticated, require_scope
from referral.core import errors
from referral.core.appkeys import service_keys_key, sessionmaker_key, settings_key
from referral.core.web import json_response

routes = web.RouteTableDef()

CHECKPOINT_PAGE_LIMIT = 100


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _int_query(request: web.Request, name: str, *, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is not None:
            return default
        raise errors.BadRequest(f"query parameter {name!r} is required")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise errors.BadRequest(f"query parameter {name!r} must be a non-negative integer")
    return int(raw)


@routes.get("/v1/audit/checkpoint")
async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest signed checkpoint as a C2SP signed note."""
    authenticated(request)
    async with request.app[sessionmaker_key]() as session:
        checkpoint = await latest_checkpoint(session)
    if checkpoint is None:
        raise errors.NotFound("no checkpoint has been signed yet: the audit log is empty")
    return web.Response(text=checkpoint.note, content_type="text/plain", charset="utf-8")


@routes.get("/v1/audit/checkpoints")
async def list_checkpoints(request: web.Request) -> web.Response:
    """Checkpoints with a tree size greater than ``after``, oldest first."""
    authenticated(request)
    after = _int_query(request, "after", default=0)
    limit = min(_int_query(request, "limit", default=CHECKPOINT_PAGE_LIMIT), CHECKPOINT_PAGE_LIMIT) or 1
    async with request.app[sessionmaker_key]() as session:
        rows = (
            (
                await session.execute(
                    select(AuditCheckpoint)
                    .where(AuditCheckpoint.tree_size > after)
                    .order_by(AuditCheckpoint.tree_size)
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
    return json_response(
        {
            "checkpoints": [
                {"tree_size": row.tree_size, "root_hash": _b64(row.root_hash), "note": row.note}
                for row in rows
            ]
        }
    )


@routes.get("/v1/audit/vkey")
async def get_vkey(request: web.Request) -> web.Response:
    """The verifier key of the active checkpoint-signing key: ``name+hex8(keyid)+base64(0x01‖pub)``."""
    settings = request.app[settings_key]
    signer = note_signer(request.app[service_keys_key].active, settings.audit_origin)
    return web.Response(text=signer.vkey() + "\n", content_type="text/plain", charset="utf-8")


@routes.get("/v1/audit/entries/{entry_id}")
async def get_audit_entry(request: web.Request) -> web.Response:
    """An entry with its leaf index and hash, to the parties it names and to operators."""
    principal = require_scope(request, "audit:read")
    async with request.app[sessionmaker_key]() as session:
        found = await get_entry(session, entry_id=request.match_info["entry_id"])
    if found is None or (
        principal.party_kind is not PartyKind.OPERATOR and principal.party_id not in found.entry.visible_to
    ):
        raise errors.NotFound("no audit entry with this id")
    return json_response(
        {
            "entry": entry_document(found.entry),
            "leaf_index": found.leaf_index,
            "leaf_hash": _b64(found.leaf_hash) if found.leaf_hash is not None else None,
        }
    )


@routes.get("/v1/audit/proof/inclusion")
async def get_inclusion_proof(request: web.Request) -> web.Response:
    """The inclusion proof of a leaf in a tree of the given size."""
    authenticated(request)
    leaf_index = _int_query(request, "leaf_index")
    tree_size = _int_query(request, "tree_size")
    async with request.app[sessionmaker_key]() as session:
        hashes = await proofs.inclusion_proof(session, leaf_index=leaf_index, tree_size=tree_size)
    return json_response(
        {"leaf_index": leaf_index, "tree_size": tree_size, "hashes": [_b64(h) for h in hashes]}
    )


@routes.get("/v1/audit/proof/consistency")
async def get_consistency_proof(request: web.Request) -> web.Response:
    """The consistency proof between two tree sizes."""
    authenticated(request)
    first = _int_query(request, "first")
    second = _int_query(request, "second")
    async with request.app[sessionmaker_key]() as session:
        hashes = await proofs.consistency_proof(session, first=first, second=second)
    return json_response({"first": first, "second": second, "hashes": [_b64(h) for h in hashes]})
