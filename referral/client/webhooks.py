"""Verifying webhook deliveries signed per Standard Webhooks (``webhook-id``, ``-timestamp``, ``-signature``).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``. ``webhook-signature`` holds space-separated
``v1,<base64 HMAC-SHA256>`` (with the subscription's ``whsec_`` secret) and ``v1a,<base64 Ed25519>`` (with
the service's public key) signatures; one valid signature of a kind the receiver holds a key for suffices.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from referral.client.errors import ConfigurationError, WebhookVerificationError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the marker of a secret, not one
PUBLIC_KEY_PREFIX = "whpk_"
DEFAULT_TOLERANCE_SECONDS = 300

PublicKeyLike = Ed25519PublicKey | bytes | str | Mapping[str, Any]


@dataclass(frozen=True)
class WebhookMessage:
    """A delivery whose signature checked out."""

    id: str
    timestamp: int
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (the event)."""
        return json.loads(self.body)


def signed_content(message_id: str, timestamp: int | str, body: bytes) -> bytes:
    """The bytes both signature schemes cover."""
    return f"{message_id}.{timestamp}.".encode() + body


def _b64decode(text: str) -> bytes:
    # Unpadded secrets are common in the wild; the reference libraries accept them too.
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def secret_bytes(secret: str | bytes) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (raw bytes are taken as they are)."""
    if isinstance(secret, bytes):
        key = secret
    else:
        try:
            key = _b64decode(secret.removeprefix(SECRET_PREFIX))
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError("the webhook secret is not whsec_ followed by base64") from exc
    if not key:
        raise ConfigurationError("the webhook secret is empty")
    return key


def _ed25519_from_jwk(document: Mapping[str, Any]) -> Ed25519PublicKey:
    if (
        document.get("kty") != "OKP"
        or document.get("crv") != "Ed25519"
        or not isinstance(document.get("x"), str)
    ):
        raise ConfigurationError("the webhook public key must be an Ed25519 (OKP) JWK")
    x = str(document["x"])
    return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))


def public_keys(value: PublicKeyLike) -> list[Ed25519PublicKey]:
    """Ed25519 public keys from a key object, raw bytes, ``whpk_<base64>``, a JWK or a JWK Set."""
    try:
        if isinstance(value, Ed25519PublicKey):
            return [value]
        if isinstance(value, bytes):
            return [Ed25519PublicKey.from_public_bytes(value)]
        if isinstance(value, str):
            return [Ed25519PublicKey.from_public_bytes(_b64decode(value.removeprefix(PUBLIC_KEY_PREFIX)))]
        if isinstance(value.get("keys"), list):
            return [
                _ed25519_from_jwk(key)
                for key in value["keys"]
                if isinstance(key, Mapping) and key.get("kty") == "OKP" and key.get("crv") == "Ed25519"
            ]
        return [_ed25519_from_jwk(value)]
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("the webhook public key is not a valid Ed25519 public key") from exc


def _decoded(signature: str) -> bytes | None:
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    *,
    secret: str | bytes | None = None,
    public_key: PublicKeyLike | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> WebhookMessage:
    """Check a delivery's timestamp and that one ``v1`` (secret) or ``v1a`` (public key) signature is valid.

    ``body`` must be the raw request body, byte for byte. Raises ``WebhookVerificationError`` otherwise.
    """
    if secret is None and public_key is None:
        raise ConfigurationError("verify_webhook needs the subscription's secret or the service's public key")
    hmac_key = secret_bytes(secret) if secret is not None else None
    keys = public_keys(public_key) if public_key is not None else []
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not timestamp_text or not signatures:
        raise WebhookVerificationError("webhook-id, webhook-timestamp and webhook-signature are required")
    if not timestamp_text.isascii() or not timestamp_text.isdigit():
        raise WebhookVerificationError("webhook-timestamp must be whole Unix seconds")
    timestamp = int(timestamp_text)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError("the webhook timestamp is too old (a replay?)")
    if timestamp > current + tolerance:
        raise WebhookVerificationError("the webhook timestamp is too far in the future")

    content = signed_content(message_id, timestamp_text, body)
    expected = hmac.new(hmac_key, content, hashlib.sha256).digest() if hmac_key is not None else None
    for versioned in signatures.split(" "):
        version, _, encoded = versioned.partition(",")
        signature = _decoded(encoded)
        if signature is None:
            continue
        if version == "v1" and expected is not None and hmac.compare_digest(expected, signature):
            return WebhookMessage(id=message_id, timestamp=timestamp, body=body)
        if version == "v1a":
            for key in keys:
                try:
                    key.verify(signature, content)
                except InvalidSignature:
                    continue
                return WebhookMessage(id=message_id, timestamp=timestamp, body=body)
    raise WebhookVerificationError("no valid webhook signature for the keys given")
