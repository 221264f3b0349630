"""RFC 8785 canonical JSON against the RFC's examples and the cyberphone/json-canonicalization test data."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections import OrderedDict
from collections.abc import Mapping
from decimal import Decimal
from enum import IntEnum, StrEnum
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


# The implementation before its C-encoder fast path, kept verbatim (names prefixed) as the oracle of the
# equivalence tests below.
# I-JSON (RFC 7493) numbers are IEEE 754 doubles; an integer beyond this cannot round-trip through one.
_REFERENCE_MAX_SAFE_INTEGER = 2**53 - 1

# ECMAScript JSON.stringify escapes exactly these; every other character, U+007F and U+2028 included,
# is written as itself.
_REFERENCE_ESCAPES = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
}
_REFERENCE_ESCAPE_TABLE: dict[int, str] = {
    code: _REFERENCE_ESCAPES.get(code, f"\\u{code:04x}") for code in range(0x20)
}
_REFERENCE_ESCAPE_TABLE.update(_REFERENCE_ESCAPES)


def reference_canonical_json(value: Any) -> bytes:
    """``canonical_json`` as it was before its C-encoder fast path: the oracle of the property tests."""
    parts: list[str] = []
    _reference_write(value, parts, set())
    return "".join(parts).encode("utf-8")


def _reference_write(value: Any, parts: list[str], open_containers: set[int]) -> None:
    """Append the canonical text of ``value``; ``open_containers`` catches reference cycles."""
    # bool before int: bool is an int subclass, and True must not become 1.
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(_reference_integer(value))
    elif isinstance(value, float):
        parts.append(_reference_number(value))
    elif isinstance(value, str):
        parts.append(_reference_string(value))
    elif isinstance(value, Mapping):
        _reference_enter(value, open_containers)
        _reference_write_object(value, parts, open_containers)
        open_containers.discard(id(value))
    elif isinstance(value, list | tuple):
        _reference_enter(value, open_containers)
        parts.append("[")
        for position, item in enumerate(value):
            if position:
                parts.append(",")
            _reference_write(item, parts, open_containers)
        parts.append("]")
        open_containers.discard(id(value))
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _reference_write_object(value: Mapping[Any, Any], parts: list[str], open_containers: set[int]) -> None:
    """Append an object with its members sorted by the UTF-16 code units of their names (RFC 8785 §3.2.3)."""
    members = []
    for key in value:
        if not isinstance(key, str):
            # ValueError like every other refusal here: the mapping exists, it just has no JSON form.
            raise ValueError(f"JSON object keys must be strings, not {type(key).__name__}")  # noqa: TRY004
        members.append((_reference_utf16_sort_key(key), key))
    members.sort()
    parts.append("{")
    for position, (_, key) in enumerate(members):
        if position:
            parts.append(",")
        parts.append(_reference_string(key))
        parts.append(":")
        _reference_write(value[key], parts, open_containers)
    parts.append("}")


def _reference_enter(container: object, open_containers: set[int]) -> None:
    """Record that ``container`` is being written, refusing a cycle instead of recursing forever."""
    if id(container) in open_containers:
        raise ValueError("circular reference in JSON value")
    open_containers.add(id(container))


def _reference_integer(value: int) -> str:
    """A Python int as JSON, refused outside the range a double holds exactly."""
    if not -_REFERENCE_MAX_SAFE_INTEGER <= value <= _REFERENCE_MAX_SAFE_INTEGER:
        raise ValueError(f"integer {value} is outside ±(2**53-1) and cannot be represented exactly")
    return str(int(value))


def _reference_utf16_sort_key(key: str) -> bytes:
    """Big-endian UTF-16 bytes compare exactly as the UTF-16 code units RFC 8785 §3.2.3 sorts by."""
    _reference_check_scalar_values(key)
    return key.encode("utf-16-be")


def _reference_check_scalar_values(text: str) -> None:
    """Refuse lone surrogates: I-JSON text must be valid Unicode, and UTF-8 cannot carry them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("string contains a lone surrogate") from error


def _reference_string(text: str) -> str:
    """A JSON string literal escaped as ECMAScript JSON.stringify does (RFC 8785 §3.2.2.2)."""
    _reference_check_scalar_values(text)
    return '"' + str(text).translate(_REFERENCE_ESCAPE_TABLE) + '"'


def _reference_number(value: float) -> str:
    """ECMAScript Number::toString of a double (RFC 8785 §3.2.2.3), refusing NaN and infinities."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if value == 0:
        # Covers -0.0, which ECMAScript writes as "0".
        return "0"
    # repr gives the shortest digit string that round-trips, which is the digit string ECMAScript uses.
    sign, digit_tuple, exponent = Decimal(repr(float(value))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    # value = 0.digits * 10**point: ECMA-262 Number::toString calls count k and point n.
    count = len(digits)
    point = count + exponent
    prefix = "-" if sign else ""
    if count <= point <= 21:
        return prefix + digits + "0" * (point - count)
    if 0 < point <= 21:
        return prefix + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return prefix + "0." + "0" * -point + digits
    power = point - 1
    mantissa = digits if count == 1 else digits[0] + "." + digits[1:]
    return f"{prefix}{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


class DictSubclass(dict[str, Any]):
    """A dict subclass: not a plain value, so it takes the general path."""


# Code points that matter to the escaping and sorting rules, then anything: lone surrogates included, since
# both implementations must refuse them alike.
SPECIAL_CHARACTERS = st.sampled_from(
    [
        "\x00",
        "\x08",
        "\x1f",
        " ",
        '"',
        "\\",
        "/",
        "\x7f",
        "\x80",
        "\u2028",
        "\u2029",
        "\ud800",
        "\udfff",
        "\ue000",
        "\ufb33",
        "\uffff",
        "\U0001f600",
        "\U0010ffff",
    ]
)
TEXT = st.text(SPECIAL_CHARACTERS | st.characters(), max_size=6)
ASCII_TEXT = st.text(st.characters(max_codepoint=0x7F), max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.integers()
    | st.sampled_from(
        [2**53 - 1, 2**53, -(2**53 - 1), -(2**53), Level.HIGH, Colour.RED, 0.0, -0.0, 1e21, 1e-7]
    )
    | st.floats()
    | TEXT
    | ASCII_TEXT
    | st.sampled_from([b"bytes", frozenset(), 1j, Decimal("1.5")])
)
KEYS = ASCII_TEXT | TEXT | st.sampled_from([1, None, 2.5, True, ("a",), Colour.RED])
ANY_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(ASCII_TEXT, children, max_size=4)
        | st.dictionaries(KEYS, children, max_size=4)
        | st.dictionaries(ASCII_TEXT, children, max_size=3).map(OrderedDict)
        | st.dictionaries(ASCII_TEXT, children, max_size=3).map(DictSubclass)
    ),
    max_leaves=20,
)


def outcome(encode: Any, value: Any) -> tuple[str, Any]:
    """The bytes ``encode`` writes for ``value``, or the class and message of its refusal."""
    try:
        return "bytes", encode(value)
    except (ValueError, TypeError) as error:
        return type(error).__name__, str(error)


@settings(max_examples=600, deadline=None, database=None)
@given(ANY_VALUES)
def test_property_equal_to_the_reference_implementation(value: Any) -> None:
    assert outcome(canonical_json, value) == outcome(reference_canonical_json, value)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(ASCII_TEXT, st.integers(-(2**53 - 1), 2**53 - 1) | ASCII_TEXT | st.none(), max_size=8))
def test_property_plain_objects_equal_to_the_reference_implementation(value: dict[str, Any]) -> None:
    assert canonical_json(value) == reference_canonical_json(value)


def test_every_code_point_is_escaped_as_by_the_reference_implementation() -> None:
    # json.dumps(ensure_ascii=False) against the JSON.stringify table, one character at a time in one string.
    scalars = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF)
    assert canonical_json(scalars) == reference_canonical_json(scalars)
    assert canonical_json({"k": [scalars]}) == reference_canonical_json({"k": [scalars]})
    for code in range(0x80):
        assert canonical_json({chr(code): chr(code)}) == reference_canonical_json({chr(code): chr(code)})


@pytest.mark.parametrize("depth", [1, 31, 32, 33, 200])
def test_deep_values_equal_to_the_reference_implementation(depth: int) -> None:
    nested: Any = ["x"]
    for level in range(depth):
        nested = {"l": nested, "n": level} if level % 2 else [nested, level]
    assert canonical_json(nested) == reference_canonical_json(nested)


def test_cycles_deep_in_plain_values_are_rejected_as_before() -> None:
    looped: dict[str, Any] = {"a": [1, "b"]}
    looped["a"].append({"back": looped})
    assert outcome(canonical_json, looped) == outcome(reference_canonical_json, looped)
    assert outcome(canonical_json, looped)[0] == "ValueError"


@pytest.mark.parametrize(
    "value",
    [
        {"b": "\ud800", "a": 2**60},
        {"a": "\ud800", "b": 2**60},
        {"\udc00": 1, "a": 2**60},
        ["ok", {"x": "\ud83d\ude00"}],
        {"a": 1, "\U0001f600": 2, "\ufb33": 3},
    ],
)
def test_the_first_refusal_in_canonical_order_is_reported_as_before(value: Any) -> None:
    assert outcome(canonical_json, value) == outcome(reference_canonical_json, value)
