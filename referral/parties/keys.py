"""Public JWKs of parties and clients: strict parsing, and a cache of parsed keys for signature checks.

Only Ed25519 (``OKP``) and P-256 (``EC``) public keys are accepted; anything carrying private key material
is refused so that private keys never reach the server.

Parsed keys are cached per ``(party_id, kid)`` because importing a JWK costs as much as the signature check
itself (PERFORMANCE.md). A revocation in this process invalidates the cache as soon as it commits; a
revocation committed by *another* process (the CLI, a second API process or host) is seen here within
``KEY_CACHE_TTL_SECONDS``, after which every entry is re-read from the database.
"""

from __future__ import annotations

import base64
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY, algorithm_for
from referral.core import errors
from referral.parties import revocation
from referral.parties.models import PartyKey

KID_PATTERN = re.compile(r"[A-Za-z0-9._~:+/=-]{1,64}")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVE_BY_KTY = {"OKP": "Ed25519", "EC": "P-256"}

KEY_CACHE_TTL_SECONDS = 5.0
KEY_CACHE_SIZE = 4096

PublicKey = OKPKey | ECKey


class InvalidJwk(errors.ValidationFailed):
    """A JWK that is not an acceptable public signing key."""

    def __init__(self, detail: str, *, field: str = "jwk") -> None:
        super().__init__(detail, errors=[{"loc": [field], "msg": detail, "type": "invalid_jwk"}])


@dataclass(frozen=True)
class ParsedJwk:
    """A validated public JWK: its key id, algorithm, normalised public members and the imported key."""

    kid: str
    alg: str
    public_jwk: dict[str, str]
    key: PublicKey


def parse_public_jwk(document: object) -> ParsedJwk:
    """Validate and import a public Ed25519 or P-256 JWK; ``kid`` defaults to the RFC 7638 thumbprint."""
    if not isinstance(document, Mapping):
        raise InvalidJwk("a JWK must be a JSON object")
    private = sorted(_PRIVATE_MEMBERS & set(document))
    if private:
        raise InvalidJwk(
            f"the JWK carries private key material ({', '.join(private)}): send only the public key"
        )
    kty = document.get("kty")
    if kty not in _CURVE_BY_KTY:
        raise InvalidJwk("only OKP (Ed25519) and EC (P-256) keys are accepted")
    assert isinstance(kty, str)
    if document.get("crv") != _CURVE_BY_KTY[kty]:
        raise InvalidJwk(f"a {kty} key must use the curve {_CURVE_BY_KTY[kty]}")
    alg = algorithm_for(kty)
    if document.get("alg", alg) != alg:
        raise InvalidJwk(f"a {kty} key is used with alg {alg} only")
    if document.get("use", "sig") != "sig":
        raise InvalidJwk('the key must be a signing key ("use": "sig")')
    coordinates = ("x", "y") if kty == "EC" else ("x",)
    if not all(isinstance(document.get(name), str) for name in coordinates):
        raise InvalidJwk(f"the JWK needs the members {', '.join(coordinates)} as base64url strings")
    members = {"kty": kty, "crv": _CURVE_BY_KTY[kty], **{name: str(document[name]) for name in coordinates}}
    importable: dict[str, str | list[str]] = {**members}
    try:
        key: PublicKey = (OKPKey if kty == "OKP" else ECKey).import_key(importable)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidJwk("the JWK does not hold a valid public key") from exc
    kid = document.get("kid")
    if kid is None:
        kid = key.thumbprint()
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise InvalidJwk("kid must be 1 to 64 characters of A-Z a-z 0-9 . _ ~ : + / = -")
    public_jwk = {**members, "kid": kid, "alg": alg, "use": "sig"}
    return ParsedJwk(kid=kid, alg=alg, public_jwk=public_jwk, key=_import(public_jwk))


def _import(public_jwk: Mapping[str, str]) -> PublicKey:
    key_class = OKPKey if public_jwk["kty"] == "OKP" else ECKey
    return key_class.import_key(dict(public_jwk))


class SigningKeyRefused(errors.Problem):
    """A document names a key of its issuer that is unknown, revoked or outside its validity window."""

    status: ClassVar[int] = 422
    slug: ClassVar[str] = "signing-key-refused"
    title: ClassVar[str] = "Signing key refused"

    def __init__(self, detail: str, *, reason: str, kid: str) -> None:
        super().__init__(detail, reason=reason, kid=kid)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedKey:
    """A party's registered key that was valid and not revoked at the moment asked about."""

    party_id: str
    kid: str
    alg: str
    key: PublicKey
    public_jwk: dict[str, str]
    not_before: datetime
    not_after: datetime | None

    def verify_compact(self, compact: str | bytes) -> jws.CompactSignature:
        """Verify a compact JWS made with this key (EdDSA or ES256 only, ``kid`` must name this key)."""
        try:
            signature = jws.extract_compact(
                compact if isinstance(compact, bytes) else compact.encode(), registry=JWS_REGISTRY
            )
            header = signature.headers()
            if header.get("alg") != self.alg or header.get("kid") != self.kid:
                raise BadSignature("the JWS header does not name this key and its algorithm")
            if not jws.validate_compact(signature, self.key, algorithms=ALGORITHMS, registry=JWS_REGISTRY):
                raise BadSignature("the signature does not verify")
        except JoseError as exc:
            raise BadSignature("the JWS is malformed or its signature does not verify") from exc
        return signature

    def check_document(self, compact: str, *, alg: str, kid: str) -> None:
        """Verify a compact JWS whose header was already parsed (``alg``, ``kid``): faster than
        ``verify_compact``, which parses it again."""
        if alg != self.alg or kid != self.kid:
            raise BadSignature("the JWS header does not name this key and its algorithm")
        check_signature(self.key, alg, compact)


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _signature_bytes(part: str) -> bytes:
    if len(part) % 4 == 1 or not _BASE64URL.fullmatch(part):
        raise BadSignature("the JWS signature is not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check_signature(key: PublicKey, alg: str, compact: str) -> None:
    """Verify the signature of a compact JWS over its first two parts exactly as received, with the
    ``cryptography`` key inside ``key`` (a JOSE library would parse the whole JWS a second time).
    The caller has parsed the header and checked its ``alg`` (EdDSA or ES256) and ``kid`` against the key."""
    signing_input, _, signature_part = compact.rpartition(".")
    signature = _signature_bytes(signature_part)
    public_key = key.public_key
    try:
        if alg == "EdDSA" and isinstance(public_key, Ed25519PublicKey):
            public_key.verify(signature, signing_input.encode("ascii"))
            return
        if alg == "ES256" and isinstance(public_key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public_key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature as exc:
        raise BadSignature("the signature does not verify") from exc
    raise BadSignature("the signature does not verify")


class BadSignature(errors.Problem):
    """A JWS whose signature or header does not check out against the key it names."""

    status: ClassVar[int] = 422
    slug: ClassVar[str] = "bad-signature"
    title: ClassVar[str] = "Signature does not verify"


@dataclass(frozen=True)
class _CachedKey:
    parsed: ParsedJwk
    not_before: datetime
    not_after: datetime | None
    revoked_at: datetime | None
    loaded_at: float
    generation: int


class _KeyCache:
    """Bounded LRU of parsed party keys; entries expire after a TTL or on any local revocation."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], _CachedKey] = OrderedDict()

    def get(self, party_id: str, kid: str) -> _CachedKey | None:
        entry = self._entries.get((party_id, kid))
        if entry is None:
            return None
        if (
            entry.generation != revocation.generation()
            or time.monotonic() - entry.loaded_at > KEY_CACHE_TTL_SECONDS
        ):
            del self._entries[(party_id, kid)]
            return None
        self._entries.move_to_end((party_id, kid))
        return entry

    def put(self, party_id: str, kid: str, entry: _CachedKey) -> None:
        self._entries[(party_id, kid)] = entry
        self._entries.move_to_end((party_id, kid))
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


# Process-wide on purpose: entries are keyed by globally unique party ids, and every entry is re-validated
# against the revocation generation and a short TTL, so no stale trust outlives KEY_CACHE_TTL_SECONDS.
_cache = _KeyCache(KEY_CACHE_SIZE)


async def _load(session: AsyncSession, *, party_id: str, kid: str) -> _CachedKey | None:
    generation = revocation.generation()
    row = (
        await session.execute(select(PartyKey).where(PartyKey.party_id == party_id, PartyKey.kid == kid))
    ).scalar_one_or_none()
    if row is None:
        return None
    public_jwk: dict[str, Any] = dict(row.jwk)
    parsed = ParsedJwk(kid=row.kid, alg=row.alg, public_jwk=public_jwk, key=_import(public_jwk))
    entry = _CachedKey(
        parsed=parsed,
        not_before=row.not_before,
        not_after=row.not_after,
        revoked_at=row.revoked_at,
        loaded_at=time.monotonic(),
        generation=generation,
    )
    _cache.put(party_id, kid, entry)
    return entry


async def signing_key(session: AsyncSession, *, party_id: str, kid: str, at: datetime) -> VerifiedKey:
    """The party's key ``kid`` if registered, not revoked and valid at ``at``; else ``SigningKeyRefused``."""
    entry = _cache.get(party_id, kid) or await _load(session, party_id=party_id, kid=kid)
    return _usable(entry, party_id=party_id, kid=kid, at=at)


def cached_signing_key(*, party_id: str, kid: str, at: datetime) -> VerifiedKey | None:
    """``signing_key`` from the cache alone: ``None`` when the key is not cached."""
    entry = _cache.get(party_id, kid)
    return None if entry is None else _usable(entry, party_id=party_id, kid=kid, at=at)


def _usable(entry: _CachedKey | None, *, party_id: str, kid: str, at: datetime) -> VerifiedKey:
    if entry is None:
        raise SigningKeyRefused(f"the issuer has no registered key {kid!r}", reason="unknown", kid=kid)
    if entry.revoked_at is not None:
        raise SigningKeyRefused(f"the key {kid!r} has been revoked", reason="revoked", kid=kid)
    if at < entry.not_before:
        raise SigningKeyRefused(f"the key {kid!r} is not valid yet", reason="not_yet_valid", kid=kid)
    if entry.not_after is not None and at >= entry.not_after:
        raise SigningKeyRefused(f"the key {kid!r} has expired", reason="expired", kid=kid)
    return VerifiedKey(
        party_id=party_id,
        kid=kid,
        alg=entry.parsed.alg,
        key=entry.parsed.key,
        public_jwk=entry.parsed.public_jwk,
        not_before=entry.not_before,
        not_after=entry.not_after,
    )
