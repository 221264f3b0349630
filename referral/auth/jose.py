"""The one place JOSE algorithms are decided: EdDSA (Ed25519) and ES256, nothing else (DESIGN.md §3, §4).

Every JWS and JWT this service signs or verifies goes through ``JWS_REGISTRY`` with ``ALGORITHMS`` passed
explicitly, so ``none``, HMAC and RSA can never be selected by a token's own header.
"""

from __future__ import annotations

from typing import Final

from joserfc.errors import UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry

ALGORITHMS: Final = ("EdDSA", "ES256")


class _AllowListRegistry(JWSRegistry):
    """A JWS registry that knows only the allowed algorithms.

    joserfc warns on every use of ``EdDSA`` because RFC 9864 prefers the fully specified ``Ed25519``;
    our wire contract names ``EdDSA`` (restricted to Ed25519 keys by key import), so the warning is
    a deliberate, reviewed choice and is not raised on each request.
    """

    # joserfc refuses payloads over 128 000 base64 characters by default; a 1000-item referral is larger.
    # Signed documents are capped by the body limit and ``MAX_COMPACT_JWS_BYTES`` before they get here.
    max_payload_length = 2_000_000

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in ALGORITHMS or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


JWS_REGISTRY: Final = _AllowListRegistry(algorithms=ALGORITHMS)


def algorithm_for(kty: str) -> str:
    """The JWS ``alg`` used with a key of this type (``OKP`` → EdDSA, ``EC`` → ES256)."""
    return "EdDSA" if kty == "OKP" else "ES256"
