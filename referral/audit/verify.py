"""``referral audit verify``: check a running service's checkpoints over the API, as any outsider can.

The verifier key is pinned on first use (or given), and the last verified checkpoint is kept in a small
state file; each run proves the new checkpoint consistent with that one, so a log that rewrites or forks
its history is caught.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from referral.audit import merkle
from referral.audit.note import Ed25519NoteVerifier, parse_checkpoint, verify_note


class VerificationFailed(Exception):
    """The service's log failed a check; the message says which."""


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """The outcome of a successful run."""

    origin: str
    tree_size: int
    root_hash: bytes
    previous_size: int | None


def _load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return state


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(temporary, path)


async def _get_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        if response.status != 200:
            raise VerificationFailed(f"GET {url} answered {response.status}: {(await response.text())[:300]}")
        return await response.text()


async def verify_service(
    base_url: str, *, state_path: Path, vkey: str | None = None, token: str | None = None
) -> VerifiedCheckpoint:
    """Verify the latest checkpoint's signature and its consistency with the one verified last time."""
    base = base_url.rstrip("/")
    state = _load_state(state_path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        if vkey is None:
            vkey = state.get("vkey") or (await _get_text(http, f"{base}/v1/audit/vkey")).strip()
        verifier = Ed25519NoteVerifier.from_vkey(vkey)
        note = await _get_text(http, f"{base}/v1/audit/checkpoint")
        try:
            checkpoint = parse_checkpoint(verify_note(note, verifier))
        except ValueError as exc:
            raise VerificationFailed(f"latest checkpoint does not verify with {vkey}: {exc}") from exc
        previous_size: int | None = state.get("tree_size")
        # Checkpoints exist only for non-empty trees; an empty one is a prefix of every tree.
        if previous_size:
            previous_root = base64.b64decode(state["root_hash"])
            if checkpoint.size < previous_size:
                raise VerificationFailed(f"tree shrank from {previous_size} to {checkpoint.size} leaves")
            if checkpoint.size == previous_size:
                if checkpoint.root_hash != previous_root:
                    raise VerificationFailed(
                        f"two different roots for tree size {previous_size}: a forked log"
                    )
            else:
                url = f"{base}/v1/audit/proof/consistency?first={previous_size}&second={checkpoint.size}"
                proof = [base64.b64decode(h) for h in json.loads(await _get_text(http, url))["hashes"]]
                try:
                    merkle.verify_consistency(
                        previous_size, checkpoint.size, proof, previous_root, checkpoint.root_hash
                    )
                except merkle.ProofError as exc:
                    raise VerificationFailed(
                        f"checkpoint of size {checkpoint.size} is not consistent with the verified "
                        f"size {previous_size}: {exc}"
                    ) from exc
    _save_state(
        state_path,
        {
            "vkey": vkey,
            "origin": checkpoint.origin,
            "tree_size": checkpoint.size,
            "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
        },
    )
    return VerifiedCheckpoint(checkpoint.origin, checkpoint.size, checkpoint.root_hash, previous_size)
