"""Standard Webhooks signatures (https://www.standardwebhooks.com): ``v1`` HMAC-SHA256 with the
subscription's ``whsec_`` secret, and ``v1a`` Ed25519 with the service's own key (``whpk_`` public key).

Both sign ``"{webhook-id}.{webhook-timestamp}.{body}"``; ``webhook-signature`` carries them space-separated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from referral.core.service_keys import raw_public_bytes

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not a secret
PUBLIC_KEY_PREFIX = "whpk_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh subscription secret, ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The service's public key as Standard Webhooks spells it (``whpk_`` and the raw key in base64)."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw_public_bytes(public_key)).decode()


def _signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{message_id}.{timestamp}.".encode() + body


def sign_hmac(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,...`` signature."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, _signed_content(message_id, timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_ed25519(private_key: Ed25519PrivateKey, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1a,...`` signature."""
    return "v1a," + base64.b64encode(private_key.sign(_signed_content(message_id, timestamp, body))).decode()


def headers(
    *, secret: str, private_key: Ed25519PrivateKey, message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    signatures = (
        sign_hmac(secret, message_id, timestamp, body),
        sign_ed25519(private_key, message_id, timestamp, body),
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }
