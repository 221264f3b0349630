"""The audit log in the database: batches, contiguous indexes, signed checkpoints, append-only, fsck."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from referral.audit import merkle
from referral.audit.fsck import fsck
from referral.audit.models import AuditCheckpoint, AuditEntry, AuditLeaf, AuditPending
from referral.audit.note import Ed25519NoteVerifier, parse_checkpoint, verify_note
from referral.audit.sequencer import note_signer, sequence_pending
from referral.audit.service import append_entry, entry_document
from referral.config import Settings
from referral.core.appkeys import service_keys_key, sessionmaker_key
from referral.core.canonical import canonical_json
from tests.audit.conftest import Appender


async def _leaves(app: web.Application) -> list[tuple[int, str, bytes]]:
    async with app[sessionmaker_key]() as session:
        rows = await session.execute(
            select(AuditLeaf.leaf_index, AuditLeaf.entry_id, AuditLeaf.leaf_hash).order_by(
                AuditLeaf.leaf_index
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def _checkpoints(app: web.Application) -> list[AuditCheckpoint]:
    async with app[sessionmaker_key]() as session:
        return list(
            (await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size))).scalars()
        )


async def test_entries_are_sequenced_in_batches_with_signed_checkpoints(
    client: TestClient[Any, Any],
    app: web.Application,
    settings: Settings,
    append: Appender,
    sequence: Callable[[], Awaitable[int]],
) -> None:
    ids = await append(17)
    assert await sequence() == 17
    leaves = await _leaves(app)
    assert [index for index, _, _ in leaves] == list(range(17))
    assert sorted(entry_id for _, entry_id, _ in leaves) == sorted(ids)
    checkpoints = await _checkpoints(app)
    assert [c.tree_size for c in checkpoints] == [7, 14, 17]  # batch size 7 in these tests

    async with app[sessionmaker_key]() as session:
        entries = {e.id: e for e in (await session.execute(select(AuditEntry))).scalars()}
        assert (await session.execute(select(AuditPending))).first() is None
    leaf_hashes = [
        merkle.leaf_hash(canonical_json(entry_document(entries[entry_id]))) for _, entry_id, _ in leaves
    ]
    assert leaf_hashes == [leaf_hash for _, _, leaf_hash in leaves]

    vkey = note_signer(app[service_keys_key].active, settings.audit_origin).vkey()
    verifier = Ed25519NoteVerifier.from_vkey(vkey)
    for checkpoint in checkpoints:
        signed = parse_checkpoint(verify_note(checkpoint.note, verifier))
        assert signed.origin == settings.audit_origin
        assert signed.size == checkpoint.tree_size
        assert signed.root_hash == merkle.root_from_leaf_hashes(leaf_hashes[: checkpoint.tree_size])


async def test_nothing_pending_signs_nothing(
    client: TestClient[Any, Any], app: web.Application, sequence: Callable[[], Awaitable[int]]
) -> None:
    assert await sequence() == 0
    assert await _checkpoints(app) == []


async def test_an_entry_rolls_back_with_its_transaction(
    client: TestClient[Any, Any], app: web.Application, sequence: Callable[[], Awaitable[int]]
) -> None:
    class BusinessFailure(Exception):
        pass

    async def fail_after_appending() -> None:
        async with app[sessionmaker_key].begin() as session:
            await append_entry(session, action="referral.submitted", subject_type="referral", subject_id="x")
            raise BusinessFailure

    with pytest.raises(BusinessFailure):
        await fail_after_appending()
    assert await sequence() == 0
    async with app[sessionmaker_key]() as session:
        assert (await session.execute(select(AuditEntry))).first() is None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET action = 'referral.forged'",
        "DELETE FROM audit_entries",
        "UPDATE audit_leaves SET leaf_index = leaf_index + 100",
        "DELETE FROM audit_leaves",
        "DELETE FROM audit_nodes",
        "UPDATE audit_checkpoints SET note = 'forged'",
        "DELETE FROM audit_checkpoints",
    ],
)
async def test_the_database_refuses_to_rewrite_the_log(
    client: TestClient[Any, Any],
    app: web.Application,
    append: Appender,
    sequence: Callable[[], Awaitable[int]],
    statement: str,
) -> None:
    await append(4)
    await sequence()
    with pytest.raises((DBAPIError, IntegrityError), match="append-only"):
        async with app[sessionmaker_key].begin() as session:
            await session.execute(text(statement))
    assert len(await _leaves(app)) == 4


async def test_truncate_is_refused_on_postgresql(
    client: TestClient[Any, Any],
    app: web.Application,
    backend: str,
    append: Appender,
    sequence: Callable[[], Awaitable[int]],
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    await append(2)
    await sequence()
    with pytest.raises(DBAPIError, match="append-only"):
        async with app[sessionmaker_key].begin() as session:
            await session.execute(text("TRUNCATE audit_entries CASCADE"))


async def test_fsck_passes_on_an_intact_log(
    client: TestClient[Any, Any],
    app: web.Application,
    settings: Settings,
    append: Appender,
    sequence: Callable[[], Awaitable[int]],
) -> None:
    await append(30)
    await sequence()
    await append(3)  # pending entries are accounted for, not a problem
    async with app[sessionmaker_key]() as session:
        report = await fsck(session, keys=app[service_keys_key], origin=settings.audit_origin)
    assert report.ok, report.problems
    assert (report.leaves, report.checkpoints) == (30, 5)


async def _drop_triggers(app: web.Application, backend: str) -> None:
    async with app[sessionmaker_key].begin() as session:
        if backend == "postgresql":
            await session.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
            await session.execute(text("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER"))
        else:
            for name in ("audit_entries_no_update", "audit_checkpoints_no_update"):
                await session.execute(text(f"DROP TRIGGER {name}"))


async def test_fsck_names_the_first_tampered_leaf(
    client: TestClient[Any, Any],
    app: web.Application,
    settings: Settings,
    backend: str,
    append: Appender,
    sequence: Callable[[], Awaitable[int]],
) -> None:
    await append(20)
    await sequence()
    leaves = await _leaves(app)
    await _drop_triggers(app, backend)
    async with app[sessionmaker_key].begin() as session:
        await session.execute(
            text("UPDATE audit_entries SET action = 'referral.withdrawn' WHERE id = :id"),
            {"id": leaves[11][1]},
        )
    async with app[sessionmaker_key]() as session:
        report = await fsck(session, keys=app[service_keys_key], origin=settings.audit_origin)
    assert not report.ok
    assert report.first_bad_index == 11
    assert any("leaf 11" in problem for problem in report.problems)


async def test_fsck_catches_a_forged_checkpoint(
    client: TestClient[Any, Any],
    app: web.Application,
    settings: Settings,
    backend: str,
    append: Appender,
    sequence: Callable[[], Awaitable[int]],
) -> None:
    await append(7)
    await sequence()
    await _drop_triggers(app, backend)
    async with app[sessionmaker_key].begin() as session:
        await session.execute(text("UPDATE audit_checkpoints SET root_hash = :root"), {"root": bytes(32)})
    async with app[sessionmaker_key]() as session:
        report = await fsck(session, keys=app[service_keys_key], origin=settings.audit_origin)
    assert not report.ok
    assert report.first_bad_index == 6


async def test_concurrent_appends_and_sequencers_give_one_contiguous_chain(
    client: TestClient[Any, Any],
    app: web.Application,
    settings: Settings,
    backend: str,
) -> None:
    if backend != "postgresql":
        pytest.skip("concurrent writers are a PostgreSQL scenario; SQLite serialises them")
    sessionmaker = app[sessionmaker_key]
    signer = note_signer(app[service_keys_key].active, settings.audit_origin)
    done = asyncio.Event()

    async def writer(number: int) -> None:
        for item in range(25):
            async with sessionmaker.begin() as session:
                await append_entry(
                    session, action="status.recorded", subject_type="referral", subject_id=f"{number}-{item}"
                )

    async def sequencer() -> None:
        while not done.is_set():
            await sequence_pending(sessionmaker, signer=signer, origin=settings.audit_origin, batch_size=16)
            await asyncio.sleep(0.005)

    sequencers = [asyncio.create_task(sequencer()) for _ in range(3)]
    await asyncio.gather(*(writer(number) for number in range(8)))
    done.set()
    await asyncio.gather(*sequencers)
    await sequence_pending(sessionmaker, signer=signer, origin=settings.audit_origin, batch_size=16)

    leaves = await _leaves(app)
    assert [index for index, _, _ in leaves] == list(range(200))
    checkpoints = await _checkpoints(app)
    assert checkpoints[-1].tree_size == 200
    leaf_hashes = [leaf_hash for _, _, leaf_hash in leaves]
    previous = None
    for checkpoint in checkpoints:
        assert checkpoint.root_hash == merkle.root_from_leaf_hashes(leaf_hashes[: checkpoint.tree_size])
        if previous is not None:
            proof = merkle.consistency_proof(leaf_hashes, previous.tree_size, checkpoint.tree_size)
            merkle.verify_consistency(
                previous.tree_size, checkpoint.tree_size, proof, previous.root_hash, checkpoint.root_hash
            )
        previous = checkpoint
    async with sessionmaker() as session:
        report = await fsck(session, keys=app[service_keys_key], origin=settings.audit_origin)
    assert report.ok, report.problems
    assert base64.b64encode(checkpoints[-1].root_hash)
