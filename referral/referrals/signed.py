"""Signed documents on the wire: compact JWS parsing before verification, and the service's receipts."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.core import errors, jsontext
from referral.core.canonical import canonical_json
from referral.core.service_keys import ServiceKey, ServiceKeyRing

REFERRAL_TYP = "referral+jws"
STATUS_TYP = "status+jws"
RECEIPT_TYP = "receipt+jws"
# A 1000-item referral with long URLs and descriptions stays well under this.
MAX_COMPACT_JWS_BYTES = 1_500_000
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class MalformedDocument(errors.Problem):
    """The body is not a compact JWS of the expected kind."""

    status = 400
    slug = "malformed-document"
    title = "Malformed signed document"


@dataclass(frozen=True)
class UnverifiedDocument:
    """A compact JWS whose header and payload parse, before its signature is checked."""

    compact: str
    kid: str
    alg: str
    claims: dict[str, Any]

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the compact JWS exactly as received."""
        return hashlib.sha256(self.compact.encode("ascii")).hexdigest()


def _canonical_base64url(part: str) -> bool:
    if not _BASE64URL.fullmatch(part):
        return False
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error:
        return False
    return base64.urlsafe_b64encode(decoded).rstrip(b"=").decode("ascii") == part


def parse_compact(compact: str, *, typ: str) -> UnverifiedDocument:
    """Parse a compact JWS of ``typ`` and check its header; the signature is verified by the caller."""
    compact = compact.strip()
    if len(compact) > MAX_COMPACT_JWS_BYTES:
        raise errors.PayloadTooLarge(f"a signed document may not exceed {MAX_COMPACT_JWS_BYTES} bytes")
    if not compact.isascii() or compact.count(".") != 2:
        raise MalformedDocument("expected a JWS in compact serialization (three base64url parts)")
    if not all(_canonical_base64url(part) for part in compact.split(".")):
        # Lenient decoders ignore stray padding and the spare bits of the last character, so one signature
        # would have many spellings; a tamper-evident record accepts exactly one.
        raise MalformedDocument("each part must be unpadded, canonical base64url (RFC 7515 section 2)")
    try:
        signature = jws.extract_compact(compact.encode("ascii"), registry=JWS_REGISTRY)
        header = signature.headers()
        payload = jsontext.loads(signature.payload)
    except (JoseError, ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise MalformedDocument("the JWS header or payload is not valid base64url JSON") from exc
    if header.get("alg") not in ALGORITHMS:
        raise MalformedDocument(f"alg must be one of {', '.join(ALGORITHMS)}", allowed=list(ALGORITHMS))
    if header.get("typ") != typ:
        raise MalformedDocument(f"typ must be {typ!r}")
    if "crit" in header:
        raise MalformedDocument("no critical header extensions are supported")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise MalformedDocument("the header must name the signing key in kid")
    if not isinstance(payload, dict):
        raise MalformedDocument("the payload must be a JSON object")
    if jsontext.has_nul(payload):
        raise MalformedDocument("NUL characters are not accepted in the payload")
    return UnverifiedDocument(compact=compact, kid=kid, alg=str(header["alg"]), claims=payload)


class ReceiptSigner:
    """Signs receipts (compact JWS, ``typ`` receipt+jws) with the service's active key."""

    def __init__(self, keys: ServiceKeyRing) -> None:
        self._keys = keys
        self._headers: dict[str, bytes] = {}

    def _header(self, key: ServiceKey) -> bytes:
        if key.kid not in self._headers:
            header = {"alg": "EdDSA", "typ": RECEIPT_TYP, "kid": key.kid}
            self._headers[key.kid] = _b64url(json.dumps(header, separators=(",", ":")).encode())
        return self._headers[key.kid]

    def sign(self, claims: dict[str, Any]) -> str:
        """A receipt over ``claims``, serialised as RFC 8785 JSON so anyone can recompute the bytes.

        Signed with ``cryptography`` directly (Ed25519 over ``header.payload``, RFC 7515 §5.1): the JWS is
        fixed in shape, and a JOSE library's generic path costs several times the signature itself.
        """
        active = self._keys.active
        signing_input = self._header(active) + b"." + _b64url(canonical_json(claims))
        signature = _b64url(active.private_key.sign(signing_input))
        return (signing_input + b"." + signature).decode("ascii")


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")
