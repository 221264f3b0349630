"""RFC 8785 canonical JSON against the RFC's examples and the cyberphone/json-canonicalization test data."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral.core.canonical import canonical_json

# RFC 8785 Appendix B: IEEE 754 bit patterns and the text ECMAScript (and so JCS) writes for them.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]
APPENDIX_B_NOT_FINITE = ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"]


def double(bits: str) -> float:
    """The double with the given big-endian IEEE 754 bit pattern."""
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_appendix_b_numbers(bits: str, expected: str) -> None:
    assert canonical_json(double(bits)) == expected.encode("ascii")


@pytest.mark.parametrize("bits", APPENDIX_B_NOT_FINITE)
def test_appendix_b_nan_and_infinity_are_rejected(bits: str) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        canonical_json(double(bits))
    with pytest.raises(ValueError, match="not a JSON number"):
        canonical_json({"nested": [double(bits)]})


def test_rfc_3_2_2_sample() -> None:
    # RFC 8785 §3.2.2 input, parsed as a JSON parser would, and its §3.2.3/§3.2.4 canonical output.
    source = (
        "{\n"
        '  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],\n'
        '  "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n'
        '  "literals": [null, true, false]\n'
        "}"
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


def test_rfc_3_2_2_sample_utf8_bytes() -> None:
    # The same output as the hexadecimal dump in RFC 8785 §3.2.4.
    expected_hex = (
        "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 75 65 2c 66 61 6c 73 65 5d 2c 22 6e"
        " 75 6d 62 65 72 73 22 3a 5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 65 2b 33 30"
        " 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24"
        " 5c 75 30 30 30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d"
    )
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 1e-27],
        "string": '\u20ac$\u000f\nA\'B"\\\\"/',
        "literals": [None, True, False],
    }
    assert canonical_json(value) == bytes.fromhex(expected_hex)


def test_rfc_3_2_3_sorting() -> None:
    # RFC 8785 §3.2.3: names sort by UTF-16 code units, so U+1F600 (D83D DE00) sorts before U+FB33.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


# cyberphone/json-canonicalization testdata/input/*.json and testdata/output/*.json.
CYBERPHONE = {
    "arrays": (
        '[\n  56,\n  {\n    "d": true,\n    "10": null,\n    "1": [ ]\n  }\n]',
        '[56,{"1":[],"10":null,"d":true}]',
    ),
    "french": (
        '{\n  "peach": "This sorting order",\n  "p\u00e9ch\u00e9": "is wrong according to French",\n'
        '  "p\u00eache": "but canonicalization MUST",\n  "sin":   "ingnore locale"\n}\n',
        '{"peach":"This sorting order","p\u00e9ch\u00e9":"is wrong according to French",'
        '"p\u00eache":"but canonicalization MUST","sin":"ingnore locale"}',
    ),
    "structures": (
        '{\n  "1": {"f": {"f": "hi","F": 5} ,"\\n": 56.0},\n  "10": { },\n  "": "empty",\n  "a": { },\n'
        '  "111": [ { } ],\n  "A": { }\n}',
        '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{}],"A":{},"a":{}}',
    ),
    "unicode": (
        '{\n  "Unnormalized Unicode":"\\u1e0d\\u0307"\n}\n',
        '{"Unnormalized Unicode":"\u1e0d\u0307"}',
    ),
    "values": (
        '{\n  "numbers": [1E30, 4.50, 333333333.33333329, 2e-3, 0.000000000000000000000000001],\n'
        '  "escaping": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n'
        '  "literals": [null, true, false]\n}',
        '{"escaping":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/","literals":[null,true,false],'
        '"numbers":[1e+30,4.5,333333333.3333333,0.002,1e-27]}',
    ),
    "weird": (
        '{\n  "\\u20ac": "Euro Sign",\n  "1": "One",\n  "\\u0080": "Control\\u007f",\n'
        '  "\\ud83d\\ude02": "Smiley",\n  "\\u00f6": "Latin Small Letter O With Diaeresis",\n'
        '  "\\ufb33": "Hebrew Letter Dalet With Dagesh",\n  "</script>": "Browser Challenge"\n}\n',
        '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\U0001f602":"Smiley",'
        '"\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    ),
}


@pytest.mark.parametrize("name", sorted(CYBERPHONE))
def test_cyberphone_test_data(name: str) -> None:
    source, expected = CYBERPHONE[name]
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-0.0, "0"),
        (56.0, "56"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.1, "0.1"),
        (-1.5, "-1.5"),
        (123456789.0, "123456789"),
        (2**53 - 1, "9007199254740991"),
        (-(2**53 - 1), "-9007199254740991"),
        ("", '""'),
        ("\u2028\u007f/<>&", '"\u2028\u007f/<>&"'),
        ("\x00\x08\t\n\x0b\x0c\r\x1f", '"\\u0000\\b\\t\\n\\u000b\\f\\r\\u001f"'),
        ([], "[]"),
        ({}, "{}"),
        ((1, "a"), '[1,"a"]'),
        ([[[]]], "[[[]]]"),
    ],
)
def test_scalars_and_small_values(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_int_and_enum_subclasses_use_their_values() -> None:
    class Level(IntEnum):
        HIGH = 3

    assert canonical_json({"level": Level.HIGH}) == b'{"level":3}'
    assert canonical_json(OrderedDict([("b", 1), ("a", 2)])) == b'{"a":2,"b":1}'


@pytest.mark.parametrize("value", [2**53, -(2**53), 10**30, {"n": 2**63}])
def test_integers_beyond_double_precision_are_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="outside"):
        canonical_json(value)


@pytest.mark.parametrize("value", [{1: "a"}, {None: "a"}, {("a",): 1}, {"ok": {2.5: 1}}])
def test_non_string_keys_are_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="keys must be strings"):
        canonical_json(value)


@pytest.mark.parametrize("value", ["\ud800", {"\udc00": 1}, ["a\ud83d"]])
def test_lone_surrogates_are_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        canonical_json(value)


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object(), 1j])
def test_non_json_types_are_rejected(value: Any) -> None:
    with pytest.raises(TypeError, match="not a JSON value"):
        canonical_json(value)


def test_cycles_are_rejected() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="circular"):
        canonical_json(looped)
    shared = [1]
    assert canonical_json([shared, shared]) == b"[[1],[1]]"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, database=None)
@given(JSON_VALUES)
def test_property_output_parses_back_to_the_same_value(value: Any) -> None:
    encoded = canonical_json(value)
    # Read numbers as doubles, as an I-JSON consumer does: the shortest round-trip text brings every float
    # back bit-exact (-0.0 aside, written as 0), even where the text is a long integer like 1e16's.
    decoded = json.loads(encoded, object_pairs_hook=check_member_order, parse_int=float)
    assert decoded == value
    assert canonical_json(decoded) == encoded


def check_member_order(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A json.loads hook asserting members arrive sorted by UTF-16 code units, each name once."""
    names = [name.encode("utf-16-be") for name, _ in pairs]
    assert names == sorted(set(names))
    return dict(pairs)
