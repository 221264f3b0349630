"""The SDK's parts without a service: keys, signing, profiles, back-off, problems, imports."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from jwcrypto import jwk, jws

from referral.client import (
    ConfigurationError,
    ConflictError,
    Credentials,
    PrivateJwk,
    ServerError,
    VerificationError,
    generate_key,
    load_profile,
    sign_document,
    verify_receipt,
)
from referral.client.errors import ClientProblemError, problem_from_response
from referral.client.retry import RetryPolicy, parse_retry_after
from referral.client.signing import complete_claims


@pytest.mark.parametrize("key_type", ["ed25519", "p256"])
def test_a_signed_document_verifies_with_another_jose_library(key_type: str) -> None:
    key = generate_key(key_type)  # type: ignore[arg-type]
    claims = {"iss": "p", "iat": 1, "jti": "j", "b": "é", "a": [1, 2.5]}
    compact = sign_document(claims, key=key, typ="status+jws")
    token = jws.JWS()
    token.deserialize(compact)
    public = jwk.JWK(**key.public_jwk())
    token.verify(public)
    assert token.jose_header == {"alg": key.alg, "typ": "status+jws", "kid": public.thumbprint()}
    assert token.payload == '{"a":[1,2.5],"b":"é","iat":1,"iss":"p","jti":"j"}'.encode()


def test_private_jwks_round_trip_and_never_show_in_repr() -> None:
    key = generate_key("p256", kid="my-key")
    again = PrivateJwk.from_jwk(key.private_jwk())
    assert (again.kid, again.alg, again.public_jwk()) == ("my-key", "ES256", key.public_jwk())
    credentials = Credentials(party_id="p", client_id="c", client_key=key, signing_key=again)
    assert key.private_jwk()["d"] not in repr(credentials)
    without_kid = {name: value for name, value in key.private_jwk().items() if name != "kid"}
    assert PrivateJwk.from_jwk(without_kid).kid == jwk.JWK(**key.public_jwk()).thumbprint()
    with pytest.raises(ConfigurationError, match="public JWK"):
        PrivateJwk.from_jwk(key.public_jwk())
    with pytest.raises(ConfigurationError):
        PrivateJwk.from_jwk({"kty": "RSA", "n": "x", "e": "AQAB", "d": "x"})


def test_completed_claims_keep_what_is_given_and_refuse_another_issuer() -> None:
    completed = complete_claims({"type": "referral"}, issuer="p", now=100)
    assert completed["iss"] == "p"
    assert completed["iat"] == 100
    assert completed["jti"] != complete_claims({}, issuer="p")["jti"]
    assert complete_claims({"iat": 5, "jti": "mine"}, issuer="p")["jti"] == "mine"
    with pytest.raises(ConfigurationError, match="not the signing party"):
        complete_claims({"iss": "someone else"}, issuer="p")


def test_back_off_grows_with_jitter_and_retry_after_wins() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=8)
    for retry, ceiling in [(0, 1), (1, 2), (2, 4), (3, 8), (10, 8)]:
        delays = {policy.delay(retry) for _ in range(20)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert policy.delay(3, retry_after=0) == 0
    assert parse_retry_after("7") == 7
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_problems_map_to_classes_by_status() -> None:
    body = json.dumps(
        {
            "type": "https://referral.dev/problems/jti-conflict",
            "title": "Document id already used",
            "status": 409,
            "detail": "jti 'x' was already used",
            "request_id": "r1",
            "instance": "/v1/referrals",
        }
    ).encode()
    conflict = problem_from_response(409, body)
    assert isinstance(conflict, ConflictError)
    assert (conflict.slug, conflict.request_id, conflict.extensions) == (
        "jti-conflict",
        "r1",
        {"instance": "/v1/referrals"},
    )
    assert isinstance(problem_from_response(418, b""), ClientProblemError)
    assert isinstance(problem_from_response(504, b"gateway timeout"), ServerError)


def test_a_receipt_of_another_type_is_refused() -> None:
    key = generate_key()
    not_a_receipt = sign_document({"referral_id": "r"}, key=key, typ="referral+jws")
    jwks = {"keys": [key.public_jwk()]}
    with pytest.raises(VerificationError, match="typ"):
        verify_receipt(not_a_receipt, jwks)


def test_a_profile_comes_from_a_file_with_the_environment_on_top(tmp_path: Path) -> None:
    client_key, signing_key = generate_key(), generate_key("p256")
    (tmp_path / "keys").mkdir()
    for name, key in (("client", client_key), ("signing", signing_key)):
        path = tmp_path / "keys" / f"{name}.jwk"
        path.write_text(json.dumps(key.private_jwk()))
        path.chmod(0o600)
    profile = tmp_path / "profile.toml"
    profile.write_text(
        'url = "https://referral.example"\nparty_id = "p1"\nclient_id = "c1"\n'
        'client_key_file = "keys/client.jwk"\nsigning_key_file = "keys/signing.jwk"\nvkey = "log+0+AA=="\n'
    )
    loaded = load_profile(profile, environ={})
    assert loaded.url == "https://referral.example"
    assert loaded.vkey == "log+0+AA=="
    assert loaded.credentials is not None
    assert loaded.credentials.client_key.public_jwk() == client_key.public_jwk()
    assert loaded.credentials.signing_key is not None
    assert loaded.credentials.signing_key.alg == "ES256"

    environ = {
        "REFERRAL_PROFILE": str(profile),
        "REFERRAL_URL": "https://other.example",
        "REFERRAL_CLIENT_ID": "c2",
    }
    overlaid = load_profile(environ=environ)
    assert overlaid.url == "https://other.example"
    assert overlaid.credentials is not None
    assert overlaid.credentials.client_id == "c2"
    assert load_profile(environ=environ, url="https://given.example").url == "https://given.example"

    (tmp_path / "keys" / "client.jwk").chmod(0o640)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_profile(profile, environ={})
    assert load_profile(environ={"XDG_CONFIG_HOME": str(tmp_path / "none")}).credentials is None


def test_the_sdk_imports_no_database_code() -> None:
    code = (
        "import sys, referral.client;"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'sqlalchemy', 'alembic', 'asyncpg',"
        " 'aiosqlite', 'pydantic', 'authlib'});"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
