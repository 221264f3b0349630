"""Where webhooks may go: https URLs of public addresses only, checked when a subscription is registered and
again on every send against the addresses the connection is actually made to (so a name that later resolves
to a private address, DNS rebinding, is refused too). Redirects are never followed (see the sender).

``webhook_allow_private`` lifts the rules for local development and tests.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

MAX_URL_LENGTH = 2048
# NAT64 (RFC 6052) embeds an IPv4 address; judge the embedded one.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeDestination(OSError):
    """A webhook URL that the service refuses to call; the message says why."""


def forbidden_reason(address: IPAddress) -> str | None:
    """Why the service must not connect to ``address``, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (this includes cloud metadata services)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_unspecified or address.is_reserved or not address.is_global:
        return "not a public address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> URL:
    """The parsed URL if its form is acceptable (scheme, host, no credentials; literal IPs judged here)."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestination(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise UnsafeDestination("not a valid absolute URL") from exc
    allowed_schemes = ("https", "http") if allow_private else ("https",)
    if parsed.scheme not in allowed_schemes:
        raise UnsafeDestination("webhook URLs must use https")
    if not parsed.host:
        raise UnsafeDestination("the URL has no host")
    if parsed.user is not None or parsed.password is not None:
        raise UnsafeDestination("the URL must not carry credentials; authenticate with the webhook signature")
    literal = _literal(parsed.host)
    if literal is not None and not allow_private:
        reason = forbidden_reason(literal)
        if reason is not None:
            raise UnsafeDestination(f"{literal} is {reason}")
    return parsed


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses a name if any of its addresses is not public."""

    def __init__(self, inner: AbstractResolver, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """The addresses of ``host``, all of them public (unless private ones are allowed)."""
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                reason = forbidden_reason(ipaddress.ip_address(result["host"]))
                if reason is not None:
                    raise UnsafeDestination(f"{host} resolves to {result['host']}, {reason}")
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


async def check_destination(url: str, *, resolver: GuardedResolver, allow_private: bool) -> URL:
    """Registration-time check: the URL's form, and every address its host resolves to now."""
    parsed = check_url(url, allow_private=allow_private)
    assert parsed.host is not None
    if _literal(parsed.host) is None:
        try:
            await resolver.resolve(parsed.host, parsed.port or 443)
        except UnsafeDestination:
            raise
        except OSError as exc:
            raise UnsafeDestination(f"{parsed.host} does not resolve") from exc
    return parsed
