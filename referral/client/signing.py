"""Signing documents as the service expects them (DESIGN.md §4): compact JWS over RFC 8785 JSON."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from joserfc import jws

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.client.errors import ConfigurationError
from referral.client.keys import PrivateJwk
from referral.core.canonical import canonical_json
from referral.referrals.signed import REFERRAL_TYP, STATUS_TYP

__all__ = ["REFERRAL_TYP", "STATUS_TYP", "complete_claims", "new_jti", "sign_document"]


def new_jti() -> str:
    """A fresh document id: a random UUID, unique per issuer without coordination."""
    return str(uuid.uuid4())


def complete_claims(claims: Mapping[str, Any], *, issuer: str, now: float | None = None) -> dict[str, Any]:
    """A copy of ``claims`` with ``iss`` (the signing party), and ``iat`` and a fresh ``jti`` where absent."""
    completed = dict(claims)
    if completed.setdefault("iss", issuer) != issuer:
        raise ConfigurationError(
            f"the document's iss {completed['iss']!r} is not the signing party {issuer!r}"
        )
    completed.setdefault("iat", int(time.time() if now is None else now))
    completed.setdefault("jti", new_jti())
    return completed


def sign_document(claims: Mapping[str, Any], *, key: PrivateJwk, typ: str) -> str:
    """A compact JWS of ``claims`` serialised as RFC 8785 JSON, with ``alg``, ``typ`` and ``kid``."""
    header = {"alg": key.alg, "typ": typ, "kid": key.kid}
    return jws.serialize_compact(
        header, canonical_json(dict(claims)), key.key, algorithms=list(ALGORITHMS), registry=JWS_REGISTRY
    )
