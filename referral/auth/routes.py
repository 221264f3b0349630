"""The token endpoint, authorization server metadata (RFC 8414) and the service JWKS (``/.well-known``)."""

from __future__ import annotations

from typing import Any, ClassVar

import structlog
from aiohttp import web

from referral.auth.jose import ALGORITHMS
from referral.auth.principal import SCOPES_BY_KIND
from referral.auth.server import GRANT_TYPE, PRIVATE_KEY_JWT, OAuth2Error, TokenRequest, unverified_subject
from referral.auth.service import (
    audit_authentication_refused,
    audit_token_issued,
    load_token_client,
    record_assertion,
)
from referral.auth.state import auth_state_key
from referral.core import errors
from referral.core.appkeys import service_keys_key, sessionmaker_key, settings_key
from referral.core.web import json_response, request_id

log = structlog.get_logger("referral.auth")
routes = web.RouteTableDef()

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthProblem(errors.Problem):
    """An OAuth 2.0 error (RFC 6749 §5.2) as problem+json, carrying ``error`` and ``error_description``."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "oauth-error"
    title: ClassVar[str] = "Token request refused"

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description, headers=NO_STORE, error=error, error_description=description)


class InvalidClient(OAuthProblem):
    status: ClassVar[int] = 401
    slug: ClassVar[str] = "invalid-client"
    title: ClassVar[str] = "Client authentication failed"

    def __init__(self, description: str) -> None:
        super().__init__("invalid_client", description)
        self.headers["WWW-Authenticate"] = 'Bearer realm="referral", error="invalid_client"'


def _problem(error: OAuth2Error) -> OAuthProblem:
    description = str(error.description or error.error)
    if error.error == "invalid_client":
        return InvalidClient(description)
    return OAuthProblem(str(error.error), description)


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type != FORM_CONTENT_TYPE:
        raise OAuthProblem("invalid_request", f"the token request must be sent as {FORM_CONTENT_TYPE}")
    posted = await request.post()
    form: dict[str, str] = {}
    for name, value in posted.items():
        if not isinstance(value, str):
            raise OAuthProblem("invalid_request", "file uploads are not accepted here")
        if name in form:
            raise OAuthProblem("invalid_request", f"the parameter {name!r} is repeated")
        form[name] = value
    return form


@routes.post("/oauth/token")
async def token(request: web.Request) -> web.Response:
    """Client-credentials grant authenticated with ``private_key_jwt``; answers an RFC 9068 access token."""
    state = request.app[auth_state_key]
    settings = request.app[settings_key]
    address_key = f"addr:{request.remote or 'unknown'}"
    form = await _form(request)
    assertion = form.get("client_assertion")
    claimed = form.get("client_id") or unverified_subject(assertion)
    throttle_keys = [address_key, *([f"client:{claimed}"] if claimed else [])]
    retry_after = state.throttle.retry_after(throttle_keys)
    if retry_after is not None:
        log.warning("token_throttled", client_id=claimed, remote=request.remote)
        raise errors.TooManyRequests(
            "too many failed client authentications; try again later",
            headers={"Retry-After": str(retry_after)},
        )
    refusal: OAuthProblem | None = None
    body: dict[str, Any] | None = None
    async with request.app[sessionmaker_key].begin() as session:
        client = await load_token_client(session, client_id=claimed)
        oauth_request = TokenRequest(uri=state.server.token_endpoint, form=form, client=client)
        try:
            grant = state.server.validate(oauth_request)
            claims = oauth_request.assertion_claims or {}
            if not await record_assertion(
                session,
                client_id=grant.client.client_id,
                jti=claims["jti"],
                exp=claims["exp"],
                leeway=settings.clock_skew_seconds,
            ):
                refusal = InvalidClient("the assertion's jti has been used before")
            else:
                _status, body, _headers = grant.create_token_response()
        except OAuth2Error as error:
            refusal = _problem(error)
        if refusal is None and body is not None and client is not None:
            await audit_token_issued(
                session, client=client, token=str(body["access_token"]), request_id=request_id(request)
            )
        else:
            await audit_authentication_refused(
                session,
                claimed_client_id=claimed,
                client=client,
                assertion=assertion,
                request_id=request_id(request),
            )
    if refusal is not None or body is None:
        state.throttle.record_failure(throttle_keys)
        problem = refusal or OAuthProblem("server_error", "the token could not be issued")
        log.info(
            "token_refused", client_id=claimed, error=problem.extensions.get("error"), reason=problem.detail
        )
        raise problem
    state.throttle.forget(f"client:{claimed}")
    log.info("token_issued", client_id=claimed, scope=body.get("scope"))
    return json_response(body, headers=NO_STORE)


@routes.get("/.well-known/oauth-authorization-server")
async def authorization_server_metadata(request: web.Request) -> web.Response:
    """RFC 8414 authorization server metadata."""
    state = request.app[auth_state_key]
    return json_response(
        {
            "issuer": state.issuer,
            "token_endpoint": state.server.token_endpoint,
            "jwks_uri": f"{state.issuer}/.well-known/jwks.json",
            "grant_types_supported": [GRANT_TYPE],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": [PRIVATE_KEY_JWT],
            "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
            "scopes_supported": sorted(set().union(*SCOPES_BY_KIND.values())),
        },
        headers={"Cache-Control": "public, max-age=3600"},
    )


@routes.get("/.well-known/jwks.json")
async def service_jwks(request: web.Request) -> web.Response:
    """The service's public signing keys, active first, with retired ones that still verify old signatures."""
    return json_response(
        request.app[service_keys_key].jwks(), headers={"Cache-Control": "public, max-age=300"}
    )
