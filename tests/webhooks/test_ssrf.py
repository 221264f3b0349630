"""SSRF: webhook URLs must be https and public, at registration and again at every send (DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient

from referral.app import create_app
from referral.config import Settings
from referral.webhooks.delivery import resolver_key
from referral.webhooks.ssrf import forbidden_reason
from tests.auth.factories import TestParty, bearer, make_party


class FakeDns(AbstractResolver):
    """A resolver answering from a table that the test can change between registration and send."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        return None


@pytest.fixture
def dns() -> FakeDns:
    return FakeDns(
        {
            "public.test": ["93.184.216.34"],
            "internal.test": ["10.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "loopback6.test": ["::1"],
            "mixed.test": ["93.184.216.34", "127.0.0.1"],
            "rebind.test": ["93.184.216.34"],
        }
    )


@pytest.fixture
async def client(settings: Settings, dns: FakeDns, aiohttp_client: Any) -> TestClient[Any, Any]:
    app = create_app(
        settings.model_copy(update={"run_background_tasks": False, "webhook_allow_private": False})
    )
    app[resolver_key] = dns
    result: TestClient[Any, Any] = await aiohttp_client(app)
    return result


@pytest.fixture
async def provider(client: TestClient[Any, Any]) -> TestParty:
    return await make_party(client, kind="provider")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.8.8", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "private"),
        ("100.64.0.1", "not a public address"),
        ("100.100.100.200", "not a public address"),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_which_addresses_are_refused(address: str, reason: str | None) -> None:
    found = forbidden_reason(ipaddress.ip_address(address))
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert reason in found


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hooks", "127.0.0.1 is a loopback address"),
        ("https://10.0.0.1/hooks", "10.0.0.1 is a private address"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("https://[::1]:8443/hooks", "::1 is a loopback address"),
        ("https://localhost/hooks", "does not resolve"),
        ("https://internal.test/hooks", "internal.test resolves to 10.0.0.1, a private address"),
        ("https://metadata.test/hooks", "metadata.test resolves to 169.254.169.254, a link-local address"),
        ("https://loopback6.test/hooks", "loopback6.test resolves to ::1, a loopback address"),
        ("https://mixed.test/hooks", "mixed.test resolves to 127.0.0.1, a loopback address"),
        ("https://nowhere.test/hooks", "nowhere.test does not resolve"),
        ("http://public.test/hooks", "webhook URLs must use https"),
        ("ftp://public.test/hooks", "webhook URLs must use https"),
        ("https://user:pw@public.test/hooks", "must not carry credentials"),
        ("/hooks", "webhook URLs must use https"),
    ],
)
async def test_unsafe_urls_are_refused_at_registration(
    client: TestClient[Any, Any], provider: TestParty, url: str, why: str
) -> None:
    response = await client.post("/v1/webhooks", json={"url": url}, headers=await bearer(client, provider))
    problem = await response.json()
    assert response.status == 422, problem
    (error,) = problem["errors"]
    assert error["loc"] == ["url"]
    assert why in error["msg"]


async def test_a_real_name_resolving_to_loopback_is_refused(settings: Settings, aiohttp_client: Any) -> None:
    """Without the fake DNS: ``localhost`` resolves (through the system resolver) to loopback addresses."""
    app = create_app(
        settings.model_copy(update={"run_background_tasks": False, "webhook_allow_private": False})
    )
    client = await aiohttp_client(app)
    provider = await make_party(client, kind="provider")
    response = await client.post(
        "/v1/webhooks", json={"url": "https://localhost/hooks"}, headers=await bearer(client, provider)
    )
    problem = await response.json()
    assert response.status == 422
    assert "localhost resolves to" in problem["errors"][0]["msg"]
    assert "loopback" in problem["errors"][0]["msg"]


async def test_a_name_that_rebinds_to_a_private_address_is_refused_at_send_time(
    client: TestClient[Any, Any], provider: TestParty, dns: FakeDns
) -> None:
    headers = await bearer(client, provider)
    response = await client.post("/v1/webhooks", json={"url": "https://rebind.test/hooks"}, headers=headers)
    assert response.status == 201
    webhook = await response.json()
    dns.table["rebind.test"] = ["127.0.0.1"]
    response = await client.post(f"/v1/webhooks/{webhook['id']}/ping", headers=headers)
    delivery = await response.json()
    (attempt,) = delivery["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"] == "refused: rebind.test resolves to 127.0.0.1, a loopback address"
