"""URL normal form: the fast split and escape table against the urlsplit-and-regex version they replaced."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral.referrals.documents import normalise_url

_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f]")
_ASCII_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2048


def reference_normalise_url(url: str) -> str:
    """``normalise_url`` as it was before its own split and escape table: the oracle."""
    if _CONTROL_OR_SPACE.search(url):
        raise ValueError("URL must not contain spaces or control characters (percent-encode them)")
    try:
        parts = urlsplit(url)
    except ValueError as error:  # unbalanced or invalid [IPv6] brackets
        raise ValueError(f"URL is malformed: {error}") from error
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("URL scheme must be http or https")
    if "@" in parts.netloc:
        # Userinfo hides the real host from a human reader (https://trusted.example@evil.example/).
        raise ValueError("URL must not contain userinfo (user:password@)")
    host, port = _split_authority(parts.netloc)
    authority = _normalise_host(host)
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        authority += f":{port}"
    path = _normalise_percent_encoding(parts.path) or "/"
    query = _normalise_percent_encoding(parts.query)
    # The fragment never reaches the server, so two URLs differing only there name the same content.
    normalised = f"{parts.scheme}://{authority}{path}" + (f"?{query}" if query else "")
    if len(normalised) > MAX_URL_LENGTH:
        raise ValueError(f"URL is longer than {MAX_URL_LENGTH} characters once normalised")
    return normalised


def _split_authority(netloc: str) -> tuple[str, int | None]:
    """Host and port of an authority without userinfo; the port is None when absent or empty."""
    if netloc.startswith("["):
        end = netloc.index("]")  # urlsplit has refused an unterminated bracket
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("URL has text after its IPv6 address")
        port_text = rest[1:]
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise ValueError("URL has no host")
    if not port_text:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("URL port must be a number from 0 to 65535")
    return host, int(port_text)


def _normalise_host(host: str) -> str:
    """Lower-case ASCII host, IDNA (UTS #46) for an internationalised one, compressed form for IPv6."""
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError as error:
            raise ValueError("URL has an invalid IPv6 address") from error
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise ValueError(f"URL host is not a valid internationalised domain name: {error}") from error
    host = host.lower()
    # Only non-ASCII hosts go through IDNA: real hostnames carry underscores that IDNA 2008 refuses.
    if not _ASCII_HOST.match(host):
        raise ValueError("URL host must be a domain name or an IP address")
    return host


def _normalise_percent_encoding(component: str) -> str:
    """Upper-case escapes, decode escaped unreserved characters, UTF-8-escape non-ASCII (RFC 3986 §6.2.2)."""
    if _MALFORMED_ESCAPE.search(component):
        raise ValueError("URL has a '%' that does not start a two-digit hex escape (write %25)")

    def normalise_escape(match: re.Match[str]) -> str:
        character = chr(int(match.group(1), 16))
        return character if character in _UNRESERVED else f"%{match.group(1).upper()}"

    component = _PERCENT_ESCAPE.sub(normalise_escape, component)
    try:
        return "".join(character if character.isascii() else quote(character) for character in component)
    except UnicodeEncodeError as error:
        raise ValueError("URL contains a lone surrogate") from error


def outcome(normalise: Callable[[str], str], url: str) -> tuple[str, str]:
    """The normal form, or the refusal's class and message."""
    try:
        return "url", normalise(url)
    except ValueError as error:
        return "refused", f"{type(error).__name__}: {error}"


PIECES = st.sampled_from(
    [
        "http",
        "https",
        "HTTPS",
        "Http",
        "ftp",
        "h\u0131tp",
        "http\u017f",
        "\u212a",
        ":",
        "//",
        "/",
        "?",
        "#",
        "@",
        "[",
        "]",
        "::1",
        "[::1]",
        "[v1.x]",
        "[1.2.3.4]",
        "%",
        "%4",
        "%41",
        "%7e",
        "%7E",
        "%2f",
        "%2F",
        "%zz",
        "%c3%a4",
        "\u00e4",
        "\ud800",
        "\u2100",
        "\uff0f",
        "\U0001f600",
        "b\u00fccher.example",
        "xn--bcher-kva.example",
        "example.com",
        "EXAMPLE.com",
        "a_b.example",
        ":443",
        ":80",
        ":8080",
        ":",
        ":99999",
        ":\u0661",
        "user:pw",
        ".",
        "..",
        "-",
        "~",
        "a",
        "Z",
        "0",
        " ",
        "\t",
        "\x7f",
        "\x85",
    ]
)
URLS = st.lists(PIECES, max_size=10).map("".join)
PREFIXED = st.tuples(
    st.sampled_from(["https://", "http://", "HTTPS://", "https:", "https:///", ""]), URLS
).map("".join)


@settings(max_examples=1500, deadline=None, database=None)
@given(PREFIXED | st.text(max_size=30))
def test_property_same_normal_form_and_refusals_as_before(url: str) -> None:
    assert outcome(normalise_url, url) == outcome(reference_normalise_url, url)


@pytest.mark.parametrize(
    "url",
    [
        "https://video.example.com/watch?v=Zk3pQ9xT2bA",
        "HTTPS://Video.Example.COM:443/a%7eb/%c3%a4?q=%41x#frag",
        "https://example.com?#",
        "https://example.com#a?b",
        "https://example.com/p?a#b?c",
        "https://example.com:/",
        "https://[::1]:8443/x",
        "https://[::1/x",
        "https://\u2100.example/",
        "https://example.com/" + "a" * 2100,
        "https://example.com/" + "%e4" * 700,
        "https://example.com/%%41",
        "https://example.com/%4",
        "https://example.com/\u00e4\U0001f600?\u00e4=1",
        "https://a[b]/",
        "https://a]/x",
        "https://example.com/[x]?[y]#[z]",
        "http\u017f://example.com/",
        "HTTP://example.com",
        "https://",
        "https:///path",
        "https:example.com",
        "http://example.com:80?",
        "https://b\u00fccher.example/",
        "https://xn--bcher-kva.example/",
    ],
)
def test_same_normal_form_and_refusals_as_before(url: str) -> None:
    assert outcome(normalise_url, url) == outcome(reference_normalise_url, url)
