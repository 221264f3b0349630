"""Private keys as JWKs (Ed25519 or P-256) and the credentials of one party's integration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from referral.auth.jose import algorithm_for
from referral.client.errors import ConfigurationError

PrivateKey = OKPKey | ECKey
KeyType = Literal["ed25519", "p256"]

_CURVE_BY_KTY = {"OKP": "Ed25519", "EC": "P-256"}
_PUBLIC_MEMBERS = {"OKP": ("x",), "EC": ("x", "y")}


@dataclass(frozen=True)
class PrivateJwk:
    """An imported private signing key with its ``kid`` and JWS ``alg`` (never printed by ``repr``)."""

    kid: str
    alg: str
    key: PrivateKey = field(repr=False)

    @classmethod
    def from_jwk(cls, document: Mapping[str, Any], *, what: str = "key") -> PrivateJwk:
        """Import a private Ed25519 (``OKP``) or P-256 (``EC``) JWK; ``kid`` defaults to its thumbprint."""
        if not isinstance(document, Mapping):
            raise ConfigurationError(f"the {what} must be a JWK (a JSON object)")
        kty = document.get("kty")
        if kty not in _CURVE_BY_KTY or document.get("crv") != _CURVE_BY_KTY[kty]:
            raise ConfigurationError(f"the {what} must be an Ed25519 (OKP) or P-256 (EC) JWK")
        if not isinstance(document.get("d"), str):
            raise ConfigurationError(f"the {what} is a public JWK; the private one (with 'd') is needed")
        members = {name: document[name] for name in ("kty", "crv", "d", *_PUBLIC_MEMBERS[kty])}
        try:
            key: PrivateKey = (OKPKey if kty == "OKP" else ECKey).import_key(members)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(f"the {what} does not hold a valid private key") from exc
        kid = document.get("kid") or key.thumbprint()
        if not isinstance(kid, str):
            raise ConfigurationError(f"the {what}'s kid must be a string")
        return cls(kid=kid, alg=algorithm_for(kty), key=key)

    def public_jwk(self) -> dict[str, str]:
        """The public half as a JWK with ``kid``, ``alg`` and ``use``, ready to register."""
        public = self.key.as_dict(private=False)
        kty = str(public["kty"])
        members = {name: str(public[name]) for name in ("kty", "crv", *_PUBLIC_MEMBERS[kty])}
        return {**members, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_jwk(self) -> dict[str, str]:
        """The private JWK with ``kid``, ``alg`` and ``use`` (to write to a 0600 file, never to print)."""
        private = self.key.as_dict(private=True)
        return {**self.public_jwk(), "d": str(private["d"])}


def generate_key(key_type: KeyType = "ed25519", *, kid: str | None = None) -> PrivateJwk:
    """A fresh private signing key; its ``kid`` is the RFC 7638 thumbprint unless given."""
    key: PrivateKey = OKPKey.generate_key("Ed25519") if key_type == "ed25519" else ECKey.generate_key("P-256")
    kty = "OKP" if key_type == "ed25519" else "EC"
    return PrivateJwk(kid=kid or key.thumbprint(), alg=algorithm_for(kty), key=key)


@dataclass(frozen=True)
class Credentials:
    """Who an integration acts as: its party, its API client and key, and the party's signing key."""

    party_id: str
    client_id: str
    client_key: PrivateJwk
    signing_key: PrivateJwk | None = None

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any]) -> Credentials:
        """Credentials from the shape ``referral demo`` writes (``party_id``, ``client_id``, JWKs inline)."""
        missing = [name for name in ("party_id", "client_id", "client_key") if not document.get(name)]
        if missing:
            raise ConfigurationError(f"the credentials lack {', '.join(missing)}")
        signing = document.get("signing_key")
        return cls(
            party_id=str(document["party_id"]),
            client_id=str(document["client_id"]),
            client_key=PrivateJwk.from_jwk(document["client_key"], what="client key"),
            signing_key=PrivateJwk.from_jwk(signing, what="signing key") if signing else None,
        )
