"""Checking audit evidence client-side with the service's own pure functions (RFC 9162, C2SP notes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from referral.audit import merkle
from referral.audit.note import Checkpoint, Ed25519NoteVerifier, NoteError, parse_checkpoint, verify_note
from referral.client.errors import VerificationError
from referral.core.canonical import canonical_json

__all__ = ["Checkpoint", "EntryProof", "entry_leaf_hash", "verify_checkpoint", "verify_entry_inclusion"]


@dataclass(frozen=True)
class EntryProof:
    """An audit entry proven to be leaf ``leaf_index`` of the tree a signed checkpoint commits to."""

    entry: dict[str, Any]
    leaf_index: int
    leaf_hash: bytes
    checkpoint: Checkpoint
    note: str
    proof: tuple[bytes, ...]


def entry_leaf_hash(entry: Mapping[str, Any]) -> bytes:
    """The Merkle leaf hash of an entry: SHA-256(0x00 ‖ RFC 8785 JSON of the entry)."""
    return merkle.leaf_hash(canonical_json(dict(entry)))


def verify_checkpoint(note: str, vkey: str) -> Checkpoint:
    """The checkpoint in a signed note, once its signature by ``vkey`` and its origin check out."""
    try:
        verifier = Ed25519NoteVerifier.from_vkey(vkey.strip())
        checkpoint = parse_checkpoint(verify_note(note, verifier))
    except NoteError as exc:
        raise VerificationError(f"the checkpoint does not verify: {exc}") from exc
    # The service signs checkpoints under its origin as the key name; a note for another log is refused.
    if checkpoint.origin != verifier.name:
        raise VerificationError(f"the checkpoint is for the log {checkpoint.origin!r}, not {verifier.name!r}")
    return checkpoint


def verify_entry_inclusion(
    entry: Mapping[str, Any], *, leaf_index: int, proof: Sequence[bytes], checkpoint: Checkpoint
) -> bytes:
    """Check that ``entry`` is leaf ``leaf_index`` under the checkpoint's root; its leaf hash."""
    leaf = entry_leaf_hash(entry)
    try:
        merkle.verify_inclusion(leaf_index, checkpoint.size, leaf, proof, checkpoint.root_hash)
    except merkle.ProofError as exc:
        raise VerificationError(
            f"entry {entry.get('id')!r} is not leaf {leaf_index} of the tree of size {checkpoint.size}: {exc}"
        ) from exc
    return leaf
