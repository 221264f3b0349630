"""The service's own Ed25519 signing keys: created on first start, kept in a 0600 file, rotated on demand.

The newest key signs; retired keys stay published (``/.well-known/jwks.json``) because old access tokens,
receipts and checkpoints must still verify.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from referral.core.timeutil import isoformat, utcnow

KEY_FILE_MODE = 0o600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def jwk_thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of the OKP public JWK, used as the key id."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw_public_bytes(public_key))}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class ServiceKey:
    """One service signing key; ``retired_at`` is set once a newer key has taken over signing."""

    kid: str
    private_key: Ed25519PrivateKey
    created_at: str
    retired_at: str | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half."""
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public JWK as published in the JWKS."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw_public_bytes(self.public_key)),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    def private_jwk(self) -> dict[str, str]:
        """The private JWK (never leaves this process or the key file)."""
        raw = self.private_key.private_bytes_raw()
        return {**self.public_jwk(), "d": _b64url(raw)}

    def _to_record(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "d": _b64url(self.private_key.private_bytes_raw()),
            "created_at": self.created_at,
            "retired_at": self.retired_at,
        }

    @classmethod
    def _from_record(cls, record: dict[str, Any]) -> ServiceKey:
        private_key = Ed25519PrivateKey.from_private_bytes(_b64url_decode(record["d"]))
        return cls(
            kid=record["kid"],
            private_key=private_key,
            created_at=record["created_at"],
            retired_at=record.get("retired_at"),
        )

    @classmethod
    def generate(cls, now: datetime) -> ServiceKey:
        """A fresh key whose kid is its JWK thumbprint."""
        private_key = Ed25519PrivateKey.generate()
        return cls(
            kid=jwk_thumbprint(private_key.public_key()), private_key=private_key, created_at=isoformat(now)
        )


@dataclass(frozen=True)
class ServiceKeyRing:
    """The active signing key and every retired key, oldest first."""

    keys: tuple[ServiceKey, ...]

    @property
    def active(self) -> ServiceKey:
        """The key that signs now."""
        return self.keys[-1]

    def by_kid(self, kid: str) -> ServiceKey | None:
        """The key with this id, active or retired."""
        return next((key for key in self.keys if key.kid == kid), None)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """Every public key, newest first, as a JWK Set."""
        return {"keys": [key.public_jwk() for key in reversed(self.keys)]}


def _write_atomically(path: Path, keys: tuple[ServiceKey, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    document = {"keys": [key._to_record() for key in keys]}
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read(path: Path) -> ServiceKeyRing:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    document = json.loads(path.read_text(encoding="utf-8"))
    keys = tuple(ServiceKey._from_record(record) for record in document["keys"])
    if not keys:
        raise ValueError(f"{path} holds no keys")
    return ServiceKeyRing(keys)


def load_or_create(path: Path) -> ServiceKeyRing:
    """The key ring in ``path``. On first start the ring is written whole to a file of its own and
    published with a hard link, which fails if another process published first: racing processes (the
    workers of ``referral serve --workers N``) agree on one ring, and none reads a file still being written.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump({"keys": [ServiceKey.generate(utcnow())._to_record()]}, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(OSError):
                os.chmod(temporary, KEY_FILE_MODE)
            with contextlib.suppress(FileExistsError):  # another process's ring is there: use it
                os.link(temporary, path)
        finally:
            temporary.unlink()
    return _read(path)


def rotate(path: Path) -> ServiceKeyRing:
    """Retire the active key and make a new one active; retired keys remain for verification."""
    ring = load_or_create(path)
    now = utcnow()
    retired = tuple(
        key if key.retired_at else ServiceKey(key.kid, key.private_key, key.created_at, isoformat(now))
        for key in ring.keys
    )
    keys = (*retired, ServiceKey.generate(now))
    _write_atomically(path, keys)
    return ServiceKeyRing(keys)
