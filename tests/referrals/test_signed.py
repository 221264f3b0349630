"""Compact JWS parsing: the single-pass parser against the joserfc-based one it replaced."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.errors import JoseError

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.core import errors, jsontext
from referral.referrals.signed import (
    MAX_COMPACT_JWS_BYTES,
    REFERRAL_TYP,
    MalformedDocument,
    UnverifiedDocument,
    parse_compact,
)

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _reference_canonical_base64url(part: str) -> bool:
    if not _BASE64URL.fullmatch(part):
        return False
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error:
        return False
    return base64.urlsafe_b64encode(decoded).rstrip(b"=").decode("ascii") == part


def reference_parse_compact(compact: str, *, typ: str) -> UnverifiedDocument:
    """``parse_compact`` as it was before it stopped going through joserfc: the oracle."""
    compact = compact.strip()
    if len(compact) > MAX_COMPACT_JWS_BYTES:
        raise errors.PayloadTooLarge(f"a signed document may not exceed {MAX_COMPACT_JWS_BYTES} bytes")
    if not compact.isascii() or compact.count(".") != 2:
        raise MalformedDocument("expected a JWS in compact serialization (three base64url parts)")
    if not all(_reference_canonical_base64url(part) for part in compact.split(".")):
        raise MalformedDocument("each part must be unpadded, canonical base64url (RFC 7515 section 2)")
    try:
        signature = jws.extract_compact(compact.encode("ascii"), registry=JWS_REGISTRY)
        header = signature.headers()
        payload = jsontext.loads(signature.payload)
    except (JoseError, ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise MalformedDocument("the JWS header or payload is not valid base64url JSON") from exc
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
    if jsontext.has_nul(payload):
        raise MalformedDocument("NUL characters are not accepted in the payload")
    return UnverifiedDocument(compact=compact, kid=kid, alg=str(header["alg"]), claims=payload)


def outcome(parse: Any, compact: str) -> tuple[str, Any]:
    """What a parser makes of ``compact``: its result's fields, or its refusal's class, message and extras."""
    try:
        document = parse(compact, typ=REFERRAL_TYP)
    except errors.Problem as problem:
        return type(problem).__name__, (problem.detail, problem.extensions)
    except Exception as exc:  # noqa: BLE001 - the oracle's own crashes are compared too
        return "crash", type(exc).__name__
    return "parsed", (document.compact, document.kid, document.alg, document.claims, document.sha256)


def assert_same_as_reference(compact: str) -> None:
    expected = outcome(reference_parse_compact, compact)
    actual = outcome(parse_compact, compact)
    if expected[0] == "crash":
        # The oracle let a header that is not a JSON object through, then failed on it.
        assert actual == ("MalformedDocument", ("the JWS header or payload is not valid base64url JSON", {}))
    else:
        assert actual == expected


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


GOOD_HEADER = {"alg": "EdDSA", "typ": REFERRAL_TYP, "kid": "key-1"}
GOOD_PAYLOAD = {"iss": "authority", "jti": "j-1", "items": [{"url": "https://example.com/"}]}
SIGNATURE = b64(bytes(range(64)))
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
HEADER_VALUES = (
    st.sampled_from([*ALGORITHMS, "none", "HS256", REFERRAL_TYP, "", "b64", "key-1"]) | JSON_VALUES
)
HEADERS = st.dictionaries(
    st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku", "x5c"]), HEADER_VALUES, max_size=6
) | st.builds(
    lambda extra: {**GOOD_HEADER, **extra}, st.dictionaries(st.sampled_from(["crit", "b64"]), HEADER_VALUES)
)
PAYLOAD_TEXTS = st.one_of(
    st.builds(lambda value: json.dumps(value).encode(), JSON_VALUES),
    st.builds(lambda value: json.dumps(value, ensure_ascii=False).encode(), JSON_VALUES),
    st.builds(lambda value: json.dumps(value).encode("utf-16"), JSON_VALUES),
    st.builds(lambda value: json.dumps(value).encode("utf-32-le"), JSON_VALUES),
    st.sampled_from(
        [
            b'{"a": "\\u0000"}',
            b'{"\\u0000": 1}',
            b'{"a": "\\\\u0000"}',
            b'{"a": "x\x00"}',
            b"[" * 5000 + b"]" * 5000,
            b'{"a": 1e999999}',
            b'{"a": NaN}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe",
        ]
    ),
    st.binary(max_size=24),
)


@settings(max_examples=400, deadline=None, database=None)
@given(header=HEADERS | JSON_VALUES, payload=PAYLOAD_TEXTS, signature=st.binary(min_size=1, max_size=80))
def test_property_json_parts_parse_as_before(header: Any, payload: bytes, signature: bytes) -> None:
    assert_same_as_reference(".".join((b64(json.dumps(header).encode()), b64(payload), b64(signature))))


@settings(max_examples=400, deadline=None, database=None)
@given(
    position=st.integers(0, 10_000),
    replacement=st.text(st.sampled_from("AQgwBZaz09-_.=+/ \x00\n\xe9"), max_size=3),
    cut=st.booleans(),
)
def test_property_mutated_spellings_parse_as_before(position: int, replacement: str, cut: bool) -> None:
    compact = ".".join(
        (b64(json.dumps(GOOD_HEADER).encode()), b64(json.dumps(GOOD_PAYLOAD).encode()), SIGNATURE)
    )
    position %= len(compact) + 1
    mutated = compact[:position] + replacement + ("" if cut else compact[position + len(replacement) :])
    assert_same_as_reference(mutated)


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(max_size=60))
def test_property_arbitrary_text_parses_as_before(text: str) -> None:
    assert_same_as_reference(text)


UNENCODED_HEADER = {**GOOD_HEADER, "b64": False, "crit": ["b64"]}


@pytest.mark.parametrize(
    "compact",
    [
        ".".join((b64(json.dumps(GOOD_HEADER).encode()), b64(json.dumps(GOOD_PAYLOAD).encode()), SIGNATURE)),
        f"{b64(json.dumps(UNENCODED_HEADER).encode())}.1e10.{SIGNATURE}",
        f"{b64(json.dumps(UNENCODED_HEADER).encode())}.AAAA.{SIGNATURE}",
        f"{b64(json.dumps({**GOOD_HEADER, 'b64': False}).encode())}.1e10.{SIGNATURE}",
        f"{b64(json.dumps({**GOOD_HEADER, 'pad': 'x' * 400}).encode())}.{b64(b'{}')}.{SIGNATURE}",
        f"{b64(json.dumps(GOOD_HEADER).encode())}.{b64(b'{}')}.{'A' * 1028}",
        f"{b64(json.dumps(['alg']).encode())}.{b64(b'{}')}.{SIGNATURE}",
        f"{b64(json.dumps('alg').encode())}.{b64(b'{}')}.{SIGNATURE}",
        f"{b64(json.dumps(GOOD_HEADER).encode('utf-16'))}.{b64(b'{}')}.{SIGNATURE}",
        f"  {b64(json.dumps(GOOD_HEADER).encode())}.{b64(b'{}')}.{SIGNATURE}\n",
    ],
)
def test_edge_cases_parse_as_before(compact: str) -> None:
    assert_same_as_reference(compact)


@pytest.mark.parametrize("header", [["alg"], "alg", 1, None, []])
def test_a_header_that_is_not_an_object_is_malformed(header: Any) -> None:
    compact = f"{b64(json.dumps(header).encode())}.{b64(b'{}')}.{SIGNATURE}"
    with pytest.raises(MalformedDocument, match="not valid base64url JSON"):
        parse_compact(compact, typ=REFERRAL_TYP)


def test_sha256_is_computed_once() -> None:
    compact = ".".join(
        (b64(json.dumps(GOOD_HEADER).encode()), b64(json.dumps(GOOD_PAYLOAD).encode()), SIGNATURE)
    )
    document = parse_compact(compact, typ=REFERRAL_TYP)
    assert document.sha256 is document.sha256
    assert document.sha256 == reference_parse_compact(compact, typ=REFERRAL_TYP).sha256
