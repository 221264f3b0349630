"""A scripted stand-in for the service, to test what the SDK does on failures a real one rarely shows."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from jwcrypto import jwk, jwt

from referral.client import Credentials, generate_key

Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, title: str, *, headers: dict[str, str] | None = None, **members: Any) -> Responder:
    """A responder answering one problem+json."""

    async def respond(request: web.Request) -> web.StreamResponse:
        body = {"type": f"https://referral.dev/problems/{title.lower().replace(' ', '-')}", "title": title}
        body.update(status=status, **members)
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/problem+json",
            headers=headers,
        )

    return respond


async def hang_up(request: web.Request) -> web.StreamResponse:
    """Close the connection without answering."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@dataclass
class FakeService:
    """Issues tokens (checking each assertion with jwcrypto) and answers API calls from a script."""

    credentials: Credentials = field(
        default_factory=lambda: Credentials(
            party_id="party-1", client_id="client-1", client_key=generate_key(), signing_key=generate_key()
        )
    )
    expires_in: int = 900
    url: str = ""
    tokens_issued: int = 0
    assertion_ids: set[str] = field(default_factory=set)
    calls: list[web.Request] = field(default_factory=list)
    script: dict[str, list[Responder]] = field(default_factory=dict)
    handlers: dict[str, Responder] = field(default_factory=dict)

    def app(self) -> web.Application:
        """The web application."""
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._api)
        return app

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        key = jwk.JWK(**self.credentials.client_key.public_jwk())
        assertion = jwt.JWT(jwt=str(form["client_assertion"]), key=key, algs=["EdDSA", "ES256"])
        claims = json.loads(assertion.claims)
        client_id = self.credentials.client_id
        assert (claims["iss"], claims["sub"], claims["aud"]) == (
            client_id,
            client_id,
            f"{self.url}/oauth/token",
        )
        assert claims["exp"] - claims["iat"] <= 60
        assert abs(claims["iat"] - time.time()) < 60
        assert claims["jti"] not in self.assertion_ids
        self.assertion_ids.add(claims["jti"])
        self.tokens_issued += 1
        body = {
            "access_token": f"token-{self.tokens_issued}",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        return web.json_response(body)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(request)
        await request.read()
        scripted = self.script.get(request.path)
        if scripted:
            return await scripted.pop(0)(request)
        handler = self.handlers.get(request.path)
        if handler is not None:
            return await handler(request)
        return web.json_response({"ok": True, "authorization": request.headers.get("Authorization")})
