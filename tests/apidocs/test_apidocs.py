"""The published contract is served as it is checked in, and the reference page works offline."""

from __future__ import annotations

import re
from typing import Any

import yaml
from aiohttp.test_utils import TestClient

from tests.test_openapi import OPENAPI_PATH


async def test_openapi_yaml_is_the_checked_in_document(client: TestClient[Any, Any]) -> None:
    response = await client.get("/openapi.yaml")
    assert response.status == 200
    assert response.content_type == "application/yaml"
    body = await response.read()
    assert body == OPENAPI_PATH.read_bytes()
    assert yaml.safe_load(body)["openapi"].startswith("3.1")


async def test_the_reference_page_loads_only_its_own_files(client: TestClient[Any, Any]) -> None:
    response = await client.get("/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    html = await response.text()
    assert "<script>" not in html, "no inline script"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing from another host"
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/docs/redoc.standalone.js"]
    script = await client.get(scripts[0])
    assert script.status == 200
    assert script.content_type == "application/javascript"
    assert len(await script.read()) > 500_000
