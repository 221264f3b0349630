"""``verify_webhook`` accepts what the Standard Webhooks reference library signs, and nothing else.

``v1`` (HMAC) signatures come from the ``standardwebhooks`` package; it has no asymmetric signer, so ``v1a``
(Ed25519) signatures are made here with ``cryptography`` over the same content, as the spec defines them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from standardwebhooks import Webhook

from referral.client import ConfigurationError, WebhookVerificationError, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"a shared secret of 24 bytes").decode()
BODY = json.dumps({"type": "referral.submitted", "data": {"referral_id": "r1"}}, ensure_ascii=False).encode()


def hmac_headers(body: bytes = BODY, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    signature = Webhook(secret).sign("msg_1", datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def ed25519_signature(key: Ed25519PrivateKey, headers: dict[str, str], body: bytes = BODY) -> str:
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1a," + base64.b64encode(key.sign(content)).decode()


def test_a_reference_signature_verifies() -> None:
    message = verify_webhook(BODY, hmac_headers(), secret=SECRET)
    assert message.id == "msg_1"
    assert message.json()["data"]["referral_id"] == "r1"
    # Header names are case-insensitive, and the reference library agrees with our reading of the spec.
    headers = {name.title(): value for name, value in hmac_headers().items()}
    assert verify_webhook(BODY, headers, secret=SECRET).body == BODY
    assert Webhook(SECRET).verify(BODY, hmac_headers()) == json.loads(BODY)


# Built when each test runs: the timestamps are relative to then.
TAMPERED: dict[str, Callable[[], tuple[bytes, dict[str, str]]]] = {
    "body": lambda: (BODY + b" ", hmac_headers()),
    "secret": lambda: (BODY, hmac_headers(secret="whsec_" + base64.b64encode(b"another secret").decode())),
    "id": lambda: (BODY, {**hmac_headers(), "webhook-id": "msg_2"}),
    "old": lambda: (BODY, hmac_headers(at=int(time.time()) - 301)),
    "future": lambda: (BODY, hmac_headers(at=int(time.time()) + 301)),
    "timestamp": lambda: (BODY, {**hmac_headers(), "webhook-timestamp": "1e9"}),
    "missing": lambda: (BODY, {k: v for k, v in hmac_headers().items() if k != "webhook-signature"}),
    "garbage": lambda: (BODY, {**hmac_headers(), "webhook-signature": "v1,not base64!"}),
    "version": lambda: (
        BODY,
        {**hmac_headers(), "webhook-signature": "v2," + hmac_headers()["webhook-signature"][3:]},
    ),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_anything_else_is_refused(case: str) -> None:
    body, headers = TAMPERED[case]()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, secret=SECRET)


def test_the_tolerance_is_configurable() -> None:
    headers = hmac_headers(at=int(time.time()) - 3600)
    assert verify_webhook(BODY, headers, secret=SECRET, tolerance=7200).id == "msg_1"


def test_an_ed25519_signature_verifies_with_the_service_key_in_any_common_form() -> None:
    service_key = Ed25519PrivateKey.generate()
    raw = service_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        "kid": "k1",
    }
    headers = hmac_headers()
    # Both schemes side by side, as the service sends them; the receiver checks the one it has a key for.
    headers["webhook-signature"] = f"{headers['webhook-signature']} {ed25519_signature(service_key, headers)}"
    for public_key in (
        service_key.public_key(),
        raw,
        "whpk_" + base64.b64encode(raw).decode(),
        jwk,
        {"keys": [{"kty": "EC", "crv": "P-256", "x": "", "y": ""}, jwk]},
    ):
        assert verify_webhook(BODY, headers, public_key=public_key).id == "msg_1"

    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, public_key=other)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY + b"x", headers, public_key=service_key.public_key())


def test_a_key_is_required() -> None:
    with pytest.raises(ConfigurationError):
        verify_webhook(BODY, hmac_headers())
    with pytest.raises(ConfigurationError):
        verify_webhook(BODY, hmac_headers(), secret="whsec_")
