"""Receipts: the service's signed acknowledgement of a document it accepted, verified against its JWKS."""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.client.errors import UnknownKeyError, VerificationError
from referral.referrals.signed import RECEIPT_TYP

_PUBLIC_MEMBERS = ("kty", "crv", "x", "y")


@dataclass(frozen=True)
class Receipt:
    """A verified receipt: the compact JWS, the service key that signed it, and its claims."""

    compact: str
    kid: str
    claims: dict[str, Any]

    @property
    def referral_id(self) -> str:
        """The referral the receipt is about."""
        return str(self.claims["referral_id"])

    @property
    def jws_sha256(self) -> str:
        """Hex SHA-256 of the signed document exactly as the service received it."""
        return str(self.claims["jws_sha256"])

    @property
    def received_at(self) -> str:
        """When the service received the document (RFC 3339)."""
        return str(self.claims["received_at"])

    @property
    def audit_entry_id(self) -> str:
        """The audit entry recording the acceptance (prove it with ``ReferralClient.prove_entry``)."""
        return str(self.claims["audit_entry_id"])


def document_sha256(compact: str) -> str:
    """Hex SHA-256 of a compact JWS, as receipts state it."""
    return hashlib.sha256(compact.strip().encode("ascii")).hexdigest()


def _service_key(jwks: Mapping[str, Any], kid: str) -> OKPKey | ECKey:
    keys = jwks.get("keys")
    candidates = keys if isinstance(keys, list) else []
    match = next((key for key in candidates if isinstance(key, Mapping) and key.get("kid") == kid), None)
    if match is None:
        raise UnknownKeyError(f"the receipt names a key the service does not publish (kid {kid!r})")
    members = {name: match[name] for name in _PUBLIC_MEMBERS if name in match}
    try:
        return (OKPKey if members.get("kty") == "OKP" else ECKey).import_key(members)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise VerificationError(f"the service key {kid!r} is not a usable public key") from exc


def verify_receipt(receipt: str, jwks: Mapping[str, Any], *, document: str | None = None) -> Receipt:
    """Verify a receipt's signature with the service key it names; with ``document``, that it covers it."""
    compact = receipt.strip()
    try:
        header = jws.extract_compact(compact.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeEncodeError, binascii.Error) as exc:
        raise VerificationError("the receipt is not a compact JWS") from exc
    if header.get("typ") != RECEIPT_TYP:
        raise VerificationError(f"the receipt's typ is {header.get('typ')!r}, not {RECEIPT_TYP!r}")
    if header.get("alg") not in ALGORITHMS:
        raise VerificationError(f"the receipt's alg {header.get('alg')!r} is not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise VerificationError("the receipt names no key (kid)")
    try:
        verified = jws.deserialize_compact(
            compact, _service_key(jwks, kid), algorithms=list(ALGORITHMS), registry=JWS_REGISTRY
        )
        claims = json.loads(verified.payload)
    except (JoseError, ValueError) as exc:
        raise VerificationError("the receipt's signature does not verify") from exc
    if not isinstance(claims, dict) or not {"referral_id", "jws_sha256", "received_at"} <= set(claims):
        raise VerificationError("the receipt's payload lacks referral_id, jws_sha256 or received_at")
    if document is not None and document_sha256(document) != claims["jws_sha256"]:
        raise VerificationError("the receipt is for another document (jws_sha256 differs)")
    return Receipt(compact=compact, kid=kid, claims=claims)
