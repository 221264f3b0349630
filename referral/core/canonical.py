"""RFC 8785 JSON Canonicalization Scheme (JCS): one byte string per JSON value, for hashing and signing."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# I-JSON (RFC 7493) numbers are IEEE 754 doubles; an integer beyond this cannot round-trip through one.
MAX_SAFE_INTEGER = 2**53 - 1

# ECMAScript JSON.stringify escapes exactly these; every other character, U+007F and U+2028 included,
# is written as itself.
_ESCAPES = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
}
_ESCAPE_TABLE: dict[int, str] = {code: _ESCAPES.get(code, f"\\u{code:04x}") for code in range(0x20)}
_ESCAPE_TABLE.update(_ESCAPES)


# For a value made only of dicts with ASCII keys, lists, tuples, str, bool, None and ints within
# ±MAX_SAFE_INTEGER (see _is_plain), the C encoder writes the canonical form: its string escapes are the ones
# above (lower-case \u00xx, U+007F and U+2028 as themselves), its integers are str(int), and for ASCII names
# code point order is UTF-16 code unit order. Receipts and audit entries are all such values.
_PLAIN_ENCODER = json.JSONEncoder(
    ensure_ascii=False, check_circular=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
# Deeper values take the general path, which is also where a reference cycle is found (a cycle is deeper
# than any bound), so the C encoder needs no cycle check of its own.
_PLAIN_DEPTH = 32


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 serialisation of a JSON-shaped Python value."""
    if _is_plain(value, 0):
        try:
            return _PLAIN_ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: the general path refuses it with the error it always gave
    parts: list[str] = []
    _write(value, parts, set())
    return "".join(parts).encode("utf-8")


def _is_plain(value: Any, depth: int) -> bool:
    """Whether ``value`` holds only what ``_PLAIN_ENCODER`` writes canonically, within ``_PLAIN_DEPTH``."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        safe: bool = -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
        return safe
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is dict:
        return all(type(key) is str and key.isascii() for key in value) and all(
            type(item) is str or _is_plain(item, depth + 1) for item in value.values()
        )
    if kind is list or kind is tuple:
        return all(type(item) is str or _is_plain(item, depth + 1) for item in value)
    return False


def _write(value: Any, parts: list[str], open_containers: set[int]) -> None:
    """Append the canonical text of ``value``; ``open_containers`` catches reference cycles."""
    # bool before int: bool is an int subclass, and True must not become 1.
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(_integer(value))
    elif isinstance(value, float):
        parts.append(_number(value))
    elif isinstance(value, str):
        parts.append(_string(value))
    elif isinstance(value, Mapping):
        _enter(value, open_containers)
        _write_object(value, parts, open_containers)
        open_containers.discard(id(value))
    elif isinstance(value, list | tuple):
        _enter(value, open_containers)
        parts.append("[")
        for position, item in enumerate(value):
            if position:
                parts.append(",")
            _write(item, parts, open_containers)
        parts.append("]")
        open_containers.discard(id(value))
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _write_object(value: Mapping[Any, Any], parts: list[str], open_containers: set[int]) -> None:
    """Append an object with its members sorted by the UTF-16 code units of their names (RFC 8785 §3.2.3)."""
    members = []
    for key in value:
        if not isinstance(key, str):
            # ValueError like every other refusal here: the mapping exists, it just has no JSON form.
            raise ValueError(f"JSON object keys must be strings, not {type(key).__name__}")  # noqa: TRY004
        members.append((_utf16_sort_key(key), key))
    members.sort()
    parts.append("{")
    for position, (_, key) in enumerate(members):
        if position:
            parts.append(",")
        parts.append(_string(key))
        parts.append(":")
        _write(value[key], parts, open_containers)
    parts.append("}")


def _enter(container: object, open_containers: set[int]) -> None:
    """Record that ``container`` is being written, refusing a cycle instead of recursing forever."""
    if id(container) in open_containers:
        raise ValueError("circular reference in JSON value")
    open_containers.add(id(container))


def _integer(value: int) -> str:
    """A Python int as JSON, refused outside the range a double holds exactly."""
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ValueError(f"integer {value} is outside ±(2**53-1) and cannot be represented exactly")
    return str(int(value))


def _utf16_sort_key(key: str) -> bytes:
    """Big-endian UTF-16 bytes compare exactly as the UTF-16 code units RFC 8785 §3.2.3 sorts by."""
    _check_scalar_values(key)
    return key.encode("utf-16-be")


def _check_scalar_values(text: str) -> None:
    """Refuse lone surrogates: I-JSON text must be valid Unicode, and UTF-8 cannot carry them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("string contains a lone surrogate") from error


def _string(text: str) -> str:
    """A JSON string literal escaped as ECMAScript JSON.stringify does (RFC 8785 §3.2.2.2)."""
    _check_scalar_values(text)
    return '"' + str(text).translate(_ESCAPE_TABLE) + '"'


def _number(value: float) -> str:
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
