"""C2SP signed notes (c2sp.org/signed-note), Ed25519 keys, and tlog checkpoints (c2sp.org/tlog-checkpoint)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519_SIGNATURE_TYPE = 0x01
SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE
# The spec asks verifiers to cap signatures and accept at least 16; golang.org/x/mod/sumdb/note uses 100.
MAX_SIGNATURES = 100
ROOT_HASH_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1

_SIZE_PATTERN = re.compile(r"0|[1-9][0-9]*")


class NoteError(ValueError):
    """A note, key or checkpoint is malformed, or carries no valid signature from a known key."""


@dataclass(frozen=True)
class Checkpoint:
    """The parsed text of a tlog checkpoint: origin, tree size, root hash and any extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()


class Ed25519NoteSigner:
    """Signs note texts with an Ed25519 key under a key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        """A signer for ``name``, whose key ID is derived from the name and the public key."""
        _require_key_name(name)
        self.name = name
        self._private_key = private_key
        self.public_key_bytes = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = _key_id(name, self.public_key_bytes)

    def vkey(self) -> str:
        """The verifier key text ``name+hex8(key ID)+base64(0x01 ‖ public key)`` to give to verifiers."""
        encoded = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + self.public_key_bytes).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    def signature_line(self, text: str) -> str:
        """The ``— name base64(key ID ‖ signature)`` line, with its newline, for a note text."""
        message = _note_text_bytes(text)
        signature = self._private_key.sign(message)
        encoded = base64.b64encode(self.key_id.to_bytes(4, "big") + signature).decode("ascii")
        return f"{SIGNATURE_PREFIX}{self.name} {encoded}\n"

    def sign(self, text: str) -> str:
        """The signed note: the text, a blank line, and this key's signature line."""
        return sign_note(text, [self])

    def verifier(self) -> Ed25519NoteVerifier:
        """The matching verifier."""
        return Ed25519NoteVerifier(self.name, self._private_key.public_key())


class Ed25519NoteVerifier:
    """Checks note signatures made by one Ed25519 key under one key name."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        """A verifier for ``name`` and ``public_key``."""
        _require_key_name(name)
        self.name = name
        self.public_key = public_key
        self.public_key_bytes = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = _key_id(name, self.public_key_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> Ed25519NoteVerifier:
        """Parse a verifier key ``name+hex8(key ID)+base64(0x01 ‖ public key)``, checking its key ID."""
        name, _, rest = vkey.partition("+")
        key_id_hex, _, key_b64 = rest.partition("+")
        if not _is_key_name(name) or not re.fullmatch(r"[0-9a-f]{8}", key_id_hex):
            raise NoteError("malformed verifier key")
        key = _strict_b64decode(key_b64, "verifier key")
        if len(key) != 33 or key[0] != ED25519_SIGNATURE_TYPE:
            raise NoteError("verifier key is not an Ed25519 key")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(key[1:])
        except ValueError as error:
            raise NoteError("verifier key is not a valid Ed25519 public key") from error
        verifier = cls(name, public_key)
        if verifier.key_id != int(key_id_hex, 16):
            raise NoteError("verifier key ID does not match its name and public key")
        return verifier

    def vkey(self) -> str:
        """The verifier key text for this key."""
        encoded = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + self.public_key_bytes).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def sign_note(text: str, signers: Sequence[Ed25519NoteSigner]) -> str:
    """A note signed by each signer in order."""
    if not signers:
        raise ValueError("a note needs at least one signer")
    return text + "\n" + "".join(signer.signature_line(text) for signer in signers)


def verify_note(note: str, *verifiers: Ed25519NoteVerifier) -> str:
    """The text of ``note`` once a signature by one of ``verifiers`` has checked out; else NoteError."""
    if not verifiers:
        raise ValueError("verify_note needs at least one verifier")
    known: dict[tuple[str, int], Ed25519NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        if slot in known and known[slot].public_key_bytes != verifier.public_key_bytes:
            # Two keys with one name and ID: which one signed is undecidable, so trust neither.
            raise NoteError(f"ambiguous key {verifier.name}+{verifier.key_id:08x}")
        known[slot] = verifier

    _require_note_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, signature_block = note[: split + 1], note[split + 2 :]
    if not signature_block.endswith("\n"):
        raise NoteError("malformed note: signatures must end with a newline")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed note: too many signatures")

    message = text.encode("utf-8")
    verified = 0
    for line in lines:
        name, key_id, signature = _parse_signature_line(line)
        key = known.get((name, key_id))
        if key is None:
            # The spec requires ignoring signatures by other keys (witnesses, rotated keys).
            continue
        # Each known signature must verify, not just one: a bad one means the note was tampered with.
        if not key.verify(message, signature):
            raise NoteError(f"invalid signature for key {name}+{key_id:08x}")
        verified += 1
    if not verified:
        raise NoteError("note has no signature from a known key")
    return text


def format_checkpoint(origin: str, size: int, root_hash: bytes, extensions: Sequence[str] = ()) -> str:
    """The checkpoint note text ``origin\\nsize\\nbase64(root)\\n`` plus any extension lines."""
    if not origin or not _is_line(origin):
        raise ValueError("checkpoint origin must be a non-empty line")
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError(f"checkpoint size {size} out of range")
    if len(root_hash) != ROOT_HASH_SIZE:
        raise ValueError(f"checkpoint root hash must be {ROOT_HASH_SIZE} bytes")
    for line in extensions:
        if not line or not _is_line(line):
            raise ValueError("checkpoint extension lines must be non-empty lines")
    body = [origin, str(size), base64.b64encode(root_hash).decode("ascii"), *extensions]
    return "\n".join(body) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text strictly (as returned by ``verify_note``)."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs an origin, a size and a root hash")
    origin, size_text, root_text, *extensions = lines
    if not origin or not _is_line(origin):
        raise NoteError("checkpoint origin must be a non-empty line")
    # fullmatch and [0-9], not int(): int() takes "+1", "1_0", " 1" and non-ASCII digits.
    if not _SIZE_PATTERN.fullmatch(size_text):
        raise NoteError("checkpoint size must be decimal without leading zeros")
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise NoteError("checkpoint size out of range")
    root_hash = _strict_b64decode(root_text, "checkpoint root hash")
    if len(root_hash) != ROOT_HASH_SIZE:
        raise NoteError(f"checkpoint root hash must be {ROOT_HASH_SIZE} bytes")
    for line in extensions:
        if not line or not _is_line(line):
            raise NoteError("checkpoint extension lines must be non-empty")
    return Checkpoint(origin=origin, size=size, root_hash=root_hash, extensions=tuple(extensions))


def _key_id(name: str, public_key: bytes) -> int:
    """SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4] as a big-endian uint32."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + public_key
    ).digest()
    return int.from_bytes(digest[:4], "big")


def _is_key_name(name: str) -> bool:
    """Non-empty, no Unicode space, no '+', no control character, and valid Unicode."""
    if not name or "+" in name or not _is_line(name):
        return False
    return not any(character.isspace() for character in name)


def _require_key_name(name: str) -> None:
    """Refuse a key name the spec forbids."""
    if not _is_key_name(name):
        raise NoteError(f"invalid key name {name!r}")


def _is_line(text: str) -> bool:
    """Valid Unicode with no ASCII control characters, newline included."""
    if any(ord(character) < 0x20 for character in text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_note_characters(note: str) -> None:
    """Notes are valid UTF-8 with no control characters other than newline."""
    if not all(_is_line(line) for line in note.split("\n")):
        raise NoteError("malformed note: control character or invalid Unicode")


def _note_text_bytes(text: str) -> bytes:
    """The bytes a signature covers, after checking the text can be the body of a note."""
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _require_note_characters(text)
    return text.encode("utf-8")


def _parse_signature_line(line: str) -> tuple[str, int, bytes]:
    """Split ``— name base64(key ID ‖ signature)`` into its parts."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError("malformed note: signature line must start with an em dash and a space")
    name, separator, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not separator or not _is_key_name(name):
        raise NoteError("malformed note: bad key name in signature line")
    raw = _strict_b64decode(encoded, "signature")
    if len(raw) < 5:
        raise NoteError("malformed note: signature too short")
    return name, int.from_bytes(raw[:4], "big"), raw[4:]


def _strict_b64decode(text: str, what: str) -> bytes:
    """Standard base64 with padding, nothing else: non-canonical encodings are refused too."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise NoteError(f"malformed {what}: not base64") from error
    # Re-encoding catches nonzero padding bits, so each value has exactly one accepted spelling.
    if not text or base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"malformed {what}: not canonical base64")
    return raw
