"""Signed documents on the wire: compact JWS parsing before verification, and the service's receipts."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.core import errors, jsontext
from referral.core.canonical import canonical_json
from referral.core.service_keys import ServiceKey, ServiceKeyRing

REFERRAL_TYP = "referral+jws"
STATUS_TYP = "status+jws"
RECEIPT_TYP = "receipt+jws"
# A 1000-item referral with long URLs and descriptions stays well under this.
MAX_COMPACT_JWS_BYTES = 1_500_000
# The characters that can end a canonical base64url part, by its length mod 4: the bits past the last whole
# byte must be zero (RFC 4648 section 3.5).
_CANONICAL_LAST = {2: "AQgw", 3: "AEIMQUYcgkosw048"}


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

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the compact JWS exactly as received."""
        return hashlib.sha256(self.compact.encode("ascii")).hexdigest()


def _decode_canonical(part: str) -> bytes | None:
    """The bytes of an unpadded, canonical base64url part, or None for any other spelling."""
    remainder = len(part) % 4
    # validate=True refuses every character outside the (translated) alphabet but takes "+", "/" and
    # padding, which base64url does not have.
    if not part or remainder == 1 or "+" in part or "/" in part or "=" in part:
        return None
    if remainder and part[-1] not in _CANONICAL_LAST[remainder]:
        return None
    try:
        return base64.b64decode(part + "=" * (4 - remainder) if remainder else part, b"-_", validate=True)
    except binascii.Error:
        return None


def _malformed_json() -> MalformedDocument:
    return MalformedDocument("the JWS header or payload is not valid base64url JSON")


def _json(text: bytes) -> Any:
    try:
        return jsontext.loads(text)
    except ValueError as exc:
        raise _malformed_json() from exc


def _decoded(compact: str) -> tuple[dict[str, Any], Any, bool]:
    """The protected header and the payload of a compact JWS, each part decoded once, and whether the
    payload can hold a NUL.

    Refuses what joserfc's ``extract_compact`` refused, with the same messages, and a header that is not a
    JSON object (which joserfc let through).
    """
    header_part, payload_part, signature_part = compact.split(".")
    header_json = _decode_canonical(header_part)
    payload_json = _decode_canonical(payload_part)
    if header_json is None or payload_json is None or _decode_canonical(signature_part) is None:
        # Lenient decoders ignore stray padding and the spare bits of the last character, so one signature
        # would have many spellings; a tamper-evident record accepts exactly one.
        raise MalformedDocument("each part must be unpadded, canonical base64url (RFC 7515 section 2)")
    if (
        len(header_part) > JWS_REGISTRY.max_header_length
        or len(payload_part) > JWS_REGISTRY.max_payload_length
        or len(signature_part) > JWS_REGISTRY.max_signature_length
    ):
        raise _malformed_json()
    header = _json(header_json)
    if not isinstance(header, dict) or "alg" not in header:
        raise _malformed_json()
    if "b64" in header and header["b64"] is not True:
        # RFC 7797 unencoded payload, read as joserfc read it (only with "b64" in crit) so that such a
        # document is refused for the same reason as before; "crit" is refused in any case.
        crit = header.get("crit")
        if not isinstance(crit, list) or "b64" not in crit:
            raise _malformed_json()
        payload_json = payload_part.encode("ascii")
    # A NUL reaches a parsed string only through a \u0000 escape, or in UTF-16/32 text (whose bytes hold
    # zeros): UTF-8 text with neither cannot hold one, and the whole payload need not be walked for it.
    may_hold_nul = b"\x00" in payload_json or b"\\u0000" in payload_json
    return header, _json(payload_json), may_hold_nul


def parse_compact(compact: str, *, typ: str) -> UnverifiedDocument:
    """Parse a compact JWS of ``typ`` and check its header; the signature is verified by the caller."""
    compact = compact.strip()
    if len(compact) > MAX_COMPACT_JWS_BYTES:
        raise errors.PayloadTooLarge(f"a signed document may not exceed {MAX_COMPACT_JWS_BYTES} bytes")
    if not compact.isascii() or compact.count(".") != 2:
        raise MalformedDocument("expected a JWS in compact serialization (three base64url parts)")
    header, payload, may_hold_nul = _decoded(compact)
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
    if may_hold_nul and jsontext.has_nul(payload):
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
