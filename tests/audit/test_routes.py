"""``/v1/audit/*`` over HTTP: checkpoints, vkey, entries with tenancy, proofs; and `audit verify`."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from referral.audit import merkle
from referral.audit.note import Ed25519NoteVerifier, parse_checkpoint, verify_note
from referral.audit.verify import VerificationFailed, verify_service
from referral.cli import build_parser
from referral.config import Settings
from referral.core.canonical import canonical_json
from tests.audit.conftest import Appender, as_party
from tests.auth.factories import access_token, make_party

AUTHORITY = as_party("authority", "party-a")
PROVIDER = as_party("provider", "party-b")
OTHER_PROVIDER = as_party("provider", "party-c")
OPERATOR = as_party("operator", "party-op")
OBSERVER = as_party("observer", "party-obs")

Sequence = Callable[[], Awaitable[int]]


async def test_checkpoint_and_vkey(
    client: TestClient[Any, Any], settings: Settings, append: Appender, sequence: Sequence
) -> None:
    assert (await client.get("/v1/audit/checkpoint", headers=AUTHORITY)).status == 404
    await append(9)
    await sequence()
    vkey_response = await client.get("/v1/audit/vkey")
    assert vkey_response.status == 200
    vkey = (await vkey_response.text()).strip()
    assert vkey.startswith(settings.audit_origin + "+")
    response = await client.get("/v1/audit/checkpoint", headers=AUTHORITY)
    assert response.status == 200
    assert response.content_type == "text/plain"
    checkpoint = parse_checkpoint(verify_note(await response.text(), Ed25519NoteVerifier.from_vkey(vkey)))
    assert (checkpoint.origin, checkpoint.size) == (settings.audit_origin, 9)


async def test_audit_reads_need_authentication(client: TestClient[Any, Any], append: Appender) -> None:
    ids = await append(1)
    for path in (
        "/v1/audit/checkpoint",
        "/v1/audit/checkpoints",
        f"/v1/audit/entries/{ids[0]}",
        "/v1/audit/proof/inclusion?leaf_index=0&tree_size=1",
        "/v1/audit/proof/consistency?first=1&second=1",
    ):
        response = await client.get(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_checkpoint_history(client: TestClient[Any, Any], append: Appender, sequence: Sequence) -> None:
    await append(15)
    await sequence()
    body = await (await client.get("/v1/audit/checkpoints?after=7", headers=PROVIDER)).json()
    assert [c["tree_size"] for c in body["checkpoints"]] == [14, 15]
    assert all(c["note"].startswith("referral.localhost/audit\n") for c in body["checkpoints"])
    bad = await client.get("/v1/audit/checkpoints?after=-1", headers=PROVIDER)
    assert bad.status == 400
    assert bad.content_type == "application/problem+json"


async def test_entry_visible_to_its_parties_and_operators_only(
    client: TestClient[Any, Any], append: Appender, sequence: Sequence
) -> None:
    entry_id = (await append(1, visible_to=["party-a", "party-b"]))[0]
    unsequenced = await (await client.get(f"/v1/audit/entries/{entry_id}", headers=AUTHORITY)).json()
    assert unsequenced["leaf_index"] is None
    assert unsequenced["leaf_hash"] is None
    await sequence()
    for headers in (AUTHORITY, PROVIDER, OPERATOR):
        response = await client.get(f"/v1/audit/entries/{entry_id}", headers=headers)
        assert response.status == 200
        body = await response.json()
        assert body["entry"]["id"] == entry_id
        assert body["entry"]["visible_to"] == ["party-a", "party-b"]
        assert body["leaf_index"] == 0
    assert (await client.get(f"/v1/audit/entries/{entry_id}", headers=OTHER_PROVIDER)).status == 404
    assert (await client.get(f"/v1/audit/entries/{entry_id}", headers=OBSERVER)).status == 403
    assert (await client.get("/v1/audit/entries/no-such-entry", headers=OPERATOR)).status == 404


async def test_served_entries_and_proofs_verify_against_the_checkpoint(
    client: TestClient[Any, Any], append: Appender, sequence: Sequence
) -> None:
    ids = await append(23)
    await sequence()
    vkey = (await (await client.get("/v1/audit/vkey")).text()).strip()
    note = await (await client.get("/v1/audit/checkpoint", headers=OPERATOR)).text()
    checkpoint = parse_checkpoint(verify_note(note, Ed25519NoteVerifier.from_vkey(vkey)))
    for entry_id in ids[::5]:
        served = await (await client.get(f"/v1/audit/entries/{entry_id}", headers=OPERATOR)).json()
        # The leaf hash is recomputed by the verifier from the served entry; the stored one is not trusted.
        leaf = merkle.leaf_hash(canonical_json(served["entry"]))
        assert base64.b64decode(served["leaf_hash"]) == leaf
        proof_response = await client.get(
            f"/v1/audit/proof/inclusion?leaf_index={served['leaf_index']}&tree_size={checkpoint.size}",
            headers=PROVIDER,
        )
        proof = await proof_response.json()
        hashes = [base64.b64decode(h) for h in proof["hashes"]]
        merkle.verify_inclusion(served["leaf_index"], checkpoint.size, leaf, hashes, checkpoint.root_hash)

    history = await (await client.get("/v1/audit/checkpoints", headers=OPERATOR)).json()
    first = history["checkpoints"][0]
    consistency = await (
        await client.get(
            f"/v1/audit/proof/consistency?first={first['tree_size']}&second=23", headers=AUTHORITY
        )
    ).json()
    merkle.verify_consistency(
        first["tree_size"],
        23,
        [base64.b64decode(h) for h in consistency["hashes"]],
        base64.b64decode(first["root_hash"]),
        checkpoint.root_hash,
    )


async def test_proof_parameters_are_checked(
    client: TestClient[Any, Any], append: Appender, sequence: Sequence
) -> None:
    await append(4)
    await sequence()
    for query in (
        "/v1/audit/proof/inclusion?leaf_index=4&tree_size=4",
        "/v1/audit/proof/inclusion?leaf_index=0&tree_size=5",
        "/v1/audit/proof/inclusion?leaf_index=0",
        "/v1/audit/proof/inclusion?leaf_index=x&tree_size=4",
        "/v1/audit/proof/consistency?first=0&second=4",
        "/v1/audit/proof/consistency?first=3&second=2",
        "/v1/audit/proof/consistency?first=1&second=99",
    ):
        response = await client.get(query, headers=AUTHORITY)
        assert response.status == 400, query
        assert (await response.json())["type"].endswith("/bad-request")


async def test_verify_over_the_api_pins_the_key_and_checks_consistency(
    client: TestClient[Any, Any], append: Appender, sequence: Sequence, tmp_path: Path
) -> None:
    base = str(client.make_url("")).rstrip("/")
    token = await access_token(client, await make_party(client, kind="provider"))
    state = tmp_path / "state.json"
    await append(5)
    await sequence()
    first = await verify_service(base, state_path=state, token=token)
    # The provider's own set-up (party, key, client, token) is audited too.
    assert first.tree_size >= 5
    assert first.previous_size is None
    await append(12)
    await sequence()
    second = await verify_service(base, state_path=state, token=token)
    assert (second.tree_size, second.previous_size) == (first.tree_size + 12, first.tree_size)

    # A verifier that saw a different history (a forked log) is told so.
    saved = json.loads(state.read_text())
    saved["root_hash"] = base64.b64encode(bytes(32)).decode()
    saved["tree_size"] = 9
    state.write_text(json.dumps(saved))
    with pytest.raises(VerificationFailed, match="not consistent"):
        await verify_service(base, state_path=state, token=token)


def test_fsck_cli_reports_an_intact_log(database_url: str, tmp_path: Path, capsys: Any) -> None:
    args = build_parser().parse_args(["audit", "fsck"])
    # Called like main() does, minus configure_logging, which would bind logs to pytest's captured stderr.
    assert args.run(args, Settings(database_url=database_url, var_dir=tmp_path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"ok": True, "leaves": 0, "checkpoints": 0, "first_bad_index": None, "problems": []}
