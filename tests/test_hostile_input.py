"""Hostile input: whatever arrives, the answer is the right 4xx problem (never a 500) and nothing is written.

A seeded mutation fuzzer drives the HTTP API; hypothesis drives the parsers and the document models directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import func, select

from referral.config import Settings
from referral.core import errors
from referral.core.appkeys import sessionmaker_key
from referral.models import metadata
from referral.referrals.documents import ReferralDocument, StatusDocument
from referral.referrals.signed import REFERRAL_TYP, parse_compact
from tests.auth.factories import TestParty, bearer, make_party, sign_document
from tests.referrals.test_api import referral_claims

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_background_tasks": False, "body_read_timeout_seconds": 1.0})


async def business_rows(client: TestClient[Any, Any]) -> dict[str, int]:
    app = client.server.app
    assert app is not None
    skip = {"used_client_assertions", "audit_entries", "audit_pending", "idempotency_keys"}
    async with app[sessionmaker_key]() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in metadata.sorted_tables
            if table.name not in skip
        }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def mutations(compact: str, rng: random.Random) -> list[str]:
    """Truncations, bit flips, swapped and re-encoded parts of a valid compact JWS."""
    header, payload, signature = compact.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    not_utf8 = b64(b"\xff\xfe not utf-8")
    with_nul = b64(json.dumps({**claims, "case_reference": "a\x00b"}).encode())
    none_header = b64(json.dumps({"alg": "none", "typ": REFERRAL_TYP, "kid": "x"}).encode())
    hmac_header = b64(json.dumps({"alg": "HS256", "typ": REFERRAL_TYP, "kid": "x"}).encode())
    variants = [
        "",
        ".",
        "..",
        "a.b.c",
        compact + ".",
        compact.replace(".", "", 1),
        f"{payload}.{header}.{signature}",
        f"{header}.{payload}.",
        f"{b64(b'{}')}.{payload}.{signature}",
        f"{none_header}.{payload}.",
        f"{hmac_header}.{payload}.{signature}",
        f"{header}.{b64(b'[' * 50_000 + b']' * 50_000)}.{signature}",
        f"{header}.{not_utf8}.{signature}",
        f"{header}.{with_nul}.{signature}",
        f"{header}.{b64(b'null')}.{signature}",
        f"{header}.{b64(b'1e999999')}.{signature}",
    ]
    for _ in range(40):
        chars = list(compact)
        for _flip in range(rng.randint(1, 4)):
            index = rng.randrange(len(chars))
            # Another character than the one there: a "flip" to the same one left the valid document.
            chars[index] = rng.choice([char for char in "AZaz09-_.=+/ \x00é" if char != chars[index]])
        if (flipped := "".join(chars)) != compact:  # two flips of one place can put it back
            variants.append(flipped)
        variants.append(compact[: rng.randrange(len(compact))])
    return variants


async def test_mutated_documents_are_refused_with_4xx_and_leave_nothing(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    headers = await bearer(client, authority)
    compact = sign_document(authority, referral_claims(authority, provider))
    before = await business_rows(client)
    rng = random.Random(20261122)
    for variant in mutations(compact, rng):
        for body, content_type in ((variant.encode("utf-8", "surrogatepass"), "application/jose"),):
            response = await client.post(
                "/v1/referrals", data=body, headers={**headers, "Content-Type": content_type}
            )
            assert 400 <= response.status < 500, (variant[:80], response.status, await response.text())
            assert response.content_type == "application/problem+json"
        response = await client.post("/v1/referrals", json={"jws": variant}, headers=headers)
        assert 400 <= response.status < 500, (variant[:80], response.status)
    assert await business_rows(client) == before


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
        (b'{"jws": "' + b"\xff\xfe" + b'"}', "application/json", 400),
        (b'{"jws": "a\\u0000.b.c"}', "application/json", 400),
        (b"\x00\x00\x00", "application/jose", 400),
        (b"\xff" * 100, "application/jose", 400),
        (b'{"jws": "x"}', "text/plain", 415),
        (b"x" * (3 * 1024 * 1024), "application/jose", 413),
    ],
)
async def test_malformed_bodies(
    client: TestClient[Any, Any], authority: TestParty, body: bytes, content_type: str, status: int
) -> None:
    headers = await bearer(client, authority)
    before = await business_rows(client)
    response = await client.post(
        "/v1/referrals", data=io.BytesIO(body), headers={**headers, "Content-Type": content_type}
    )
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    assert await business_rows(client) == before


async def test_nested_and_nul_json_in_every_json_endpoint(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    operator = await make_party(client, kind="operator")
    for party, path in (
        (provider, "/v1/webhooks"),
        (operator, "/v1/parties"),
        (authority, "/v1/referrals:batch"),
    ):
        headers = await bearer(client, party)
        for body in (b"[" * 100_000, b'{"url": "https://example.org/\\u0000"}'):
            response = await client.post(
                path, data=body, headers={**headers, "Content-Type": "application/json"}
            )
            assert response.status == 400, (path, await response.text())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"items": [{"url": "https://example.org/" + "a" * 10_000}]}, "items"),
        ({"items": [{"url": "javascript:alert(1)"}]}, "items"),
        ({"items": [{"url": "http://exa mple.org/"}]}, "items"),
        ({"items": [{"url": "https://example.org/x"}] * 10_000}, "items"),
        ({"items": []}, "items"),
        ({"case_reference": "x" * 100_000}, "case_reference"),
    ],
)
async def test_absurd_documents_are_422_listing_the_field(
    client: TestClient[Any, Any],
    authority: TestParty,
    provider: TestParty,
    change: dict[str, Any],
    field: str,
) -> None:
    headers = await bearer(client, authority)
    before = await business_rows(client)
    compact = sign_document(authority, referral_claims(authority, provider, **change))
    response = await client.post(
        "/v1/referrals", data=compact, headers={**headers, "Content-Type": "application/jose"}
    )
    problem = await response.json()
    if response.status == 413:
        assert len(compact) > 1_500_000
    else:
        assert response.status == 422, problem
        assert any(error["loc"][:2] == ["payload", field] for error in problem["errors"]), problem["errors"][
            :3
        ]
    assert await business_rows(client) == before


async def test_a_trickled_body_times_out_with_408(client: TestClient[Any, Any], authority: TestParty) -> None:
    token = (await bearer(client, authority))["Authorization"]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            "POST /v1/referrals HTTP/1.1\r\n"
            f"Host: {client.host}\r\nAuthorization: {token}\r\n"
            "Content-Type: application/jose\r\nContent-Length: 1000\r\n\r\nab"
        ).encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 15)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line


async def test_headers_that_are_oversized_or_forged(
    client: TestClient[Any, Any], authority: TestParty
) -> None:
    response = await client.get("/healthz", headers={"X-Big": "x" * 20_000})
    assert response.status in (400, 431)
    response = await client.get("/healthz", headers={"X-Request-ID": "<script>alert(1)</script>"})
    assert response.headers["X-Request-ID"] != "<script>alert(1)</script>"
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET /healthz HTTP/1.1\r\nHost: {client.host}\r\nX-Request-ID: a\rInjected: 1\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 15)
    writer.close()
    assert status_line.split(b" ")[1] == b"400", status_line


@given(text=st.text(max_size=300))
@hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_parse_compact_only_ever_refuses_with_a_problem(text: str) -> None:
    try:
        parse_compact(text, typ=REFERRAL_TYP)
    except errors.Problem as problem:
        status = problem.status
    else:
        status = 200
    assert status < 500


@given(parts=st.tuples(JSON_VALUES, JSON_VALUES, st.binary(max_size=64)))
@hypothesis_settings(max_examples=300)
def test_parse_compact_of_arbitrary_json_parts(parts: tuple[Any, Any, bytes]) -> None:
    header, payload, signature = parts
    compact = ".".join((b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)))
    try:
        parse_compact(compact, typ=REFERRAL_TYP)
    except errors.Problem as problem:
        status = problem.status
    else:
        status = 200
    assert status < 500


@given(
    claims=st.dictionaries(st.sampled_from(sorted(ReferralDocument.model_fields)), JSON_VALUES, max_size=12)
)
@hypothesis_settings(max_examples=300)
def test_document_models_refuse_only_with_validation_errors(claims: dict[str, Any]) -> None:
    for model in (ReferralDocument, StatusDocument):
        with contextlib.suppress(ValidationError):
            model.model_validate(claims)


async def test_one_signature_has_one_spelling(
    client: TestClient[Any, Any], authority: TestParty, provider: TestParty
) -> None:
    """A lenient decoder reads a last character with stray low bits, or padding, as the same bytes; such
    re-spellings of a valid document are refused, so a stored JWS has exactly one form."""
    compact = sign_document(authority, referral_claims(authority, provider))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(compact[-1])
    respelled = compact[:-1] + alphabet[last | 0b0001]  # same top two bits: the same 64 signature bytes
    assert respelled != compact
    headers = {**await bearer(client, authority), "Content-Type": "application/jose"}
    for variant in (respelled, compact + "==", compact.replace(".", "=.", 1)):
        response = await client.post("/v1/referrals", data=variant, headers=headers)
        assert response.status == 400, variant[-10:]
    response = await client.post("/v1/referrals", data=compact, headers=headers)
    assert response.status == 201
