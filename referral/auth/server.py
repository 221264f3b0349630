"""``POST /oauth/token``: the client-credentials grant with ``private_key_jwt`` (RFC 6749 §4.4, RFC 7523).

authlib's authorization-server classes are synchronous and have no aiohttp binding, so this module is the
thin adapter: the async caller loads the client from the database first, authlib then authenticates the
assertion and validates the grant without any I/O, the caller records the assertion's ``jti`` (one
statement, refused on conflict) and only then authlib issues the token.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientAuthentication,
    ClientCredentialsGrant,
    ClientMixin,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jws, jwt
from joserfc.errors import JoseError

from referral.auth.jose import ALGORITHMS, JWS_REGISTRY
from referral.auth.principal import SCOPES_BY_KIND, PartyKind
from referral.auth.tokens import TokenIssuer
from referral.core import jsontext
from referral.parties.keys import PublicKey

PRIVATE_KEY_JWT = "private_key_jwt"
GRANT_TYPE = "client_credentials"
MAX_JTI_LENGTH = 256


@dataclass(frozen=True)
class TokenClient(ClientMixin):  # type: ignore[misc]  # authlib ships no type information
    """An API client as authlib sees it, loaded (with its parsed key) before authlib runs."""

    client_id: str
    party_id: str
    party_kind: PartyKind
    kid: str
    key: PublicKey
    disabled: bool

    def get_client_id(self) -> str:
        return self.client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == PRIVATE_KEY_JWT and endpoint == "token"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE

    @property
    def allowed_scopes(self) -> frozenset[str]:
        """Every scope the client's party kind may hold."""
        return SCOPES_BY_KIND[self.party_kind]


class TokenRequest(OAuth2Request):  # type: ignore[misc]
    """The form of a token request with the client the caller preloaded for its claimed id."""

    def __init__(self, *, uri: str, form: Mapping[str, str], client: TokenClient | None) -> None:
        super().__init__("POST", uri)
        self._form = dict(form)
        self.payload = BasicOAuth2Payload(self._form)
        self.preloaded_client = client
        self.assertion_claims: dict[str, Any] | None = None
        self.issued: dict[str, Any] | None = None

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}

    def query_client(self, client_id: str) -> TokenClient | None:
        """authlib's client lookup, answered from what the caller preloaded."""
        client = self.preloaded_client
        if client is None or client.client_id != client_id:
            return None
        if client.disabled:
            raise InvalidClientError(description="The client is disabled.")
        return client


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client authentication with our algorithm allow-list, audience, lifetime and kid rules."""

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(
        self, request: TokenRequest, *, audiences: list[str], leeway: int, max_lifetime: int
    ) -> None:
        super().__init__(validate_jti=True, leeway=leeway)
        self._request = request
        self._audiences = audiences
        self._max_lifetime = max_lifetime

    def get_audiences(self) -> list[str]:
        return self._audiences

    def resolve_client_public_key(self, client: TokenClient) -> PublicKey:
        return client.key

    def process_assertion_claims(self, assertion: str, resolve_key: PublicKey) -> dict[str, Any]:
        client = self._request.client
        try:
            header = jws.extract_compact(assertion.encode("ascii")).headers()
            kid = header.get("kid")
            if kid is not None and kid != client.kid:
                raise InvalidClientError(description="The assertion names an unknown key (kid).")
            claims: dict[str, Any] = jwt.decode(
                assertion, resolve_key, algorithms=ALGORITHMS, registry=JWS_REGISTRY
            ).claims
        except JoseError as exc:
            raise InvalidClientError(description=exc.description or exc.error) from exc
        except (UnicodeEncodeError, ValueError) as exc:
            raise InvalidClientError(description="Invalid JWT assertion.") from exc
        self.verify_claims(claims)
        self._request.assertion_claims = claims
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        super().verify_claims(claims)
        exp, iat = claims["exp"], claims.get("iat")
        now = jwt.JWTClaimsRegistry().now
        if exp - now > self._max_lifetime + self.leeway or (
            isinstance(iat, int | float) and exp - iat > self._max_lifetime
        ):
            raise InvalidClientError(
                description=f"The assertion must expire within {self._max_lifetime} seconds."
            )

    def validate_jti(self, claims: dict[str, Any], jti: object) -> bool:
        # Only the shape is checked here; the caller records the jti in the database (refusing a repeat)
        # before the token is issued.
        return isinstance(jti, str) and 0 < len(jti) <= MAX_JTI_LENGTH


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    """The client-credentials grant, authenticated with ``private_key_jwt`` only."""

    TOKEN_ENDPOINT_AUTH_METHODS = [PRIVATE_KEY_JWT]  # noqa: RUF012 - authlib reads it as a class attribute

    def validate_requested_scope(self) -> None:
        requested = set((self.request.payload.scope or "").split())
        if not requested <= self.request.client.allowed_scopes:
            raise InvalidScopeError(
                description="The requested scope exceeds what this party kind may hold: "
                + " ".join(sorted(self.request.client.allowed_scopes))
            )


class TokenServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server with the synchronous framework hooks implemented for our adapter."""

    def __init__(self, *, issuer: str, issuer_tokens: TokenIssuer, leeway: int, max_lifetime: int) -> None:
        super().__init__(scopes_supported=sorted(set().union(*SCOPES_BY_KIND.values())))
        self.issuer = issuer
        self.token_endpoint = f"{issuer}/oauth/token"
        self._tokens = issuer_tokens
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self.register_grant(ClientCredentials)
        self.register_token_generator("default", self._generate_token)

    def query_client(self, client_id: str) -> None:
        # Lookups go through the request's preloaded client (see authenticate_client).
        return None

    def authenticate_client(self, request: TokenRequest, methods: list[str], endpoint: str = "token") -> Any:
        authentication = ClientAuthentication(request.query_client)
        authentication.register(
            PRIVATE_KEY_JWT,
            PrivateKeyJWT(
                request,
                audiences=[self.token_endpoint, self.issuer],
                leeway=self._leeway,
                max_lifetime=self._max_lifetime,
            ),
        )
        return authentication(request, methods, endpoint)

    def _generate_token(
        self,
        *,
        grant_type: str,
        client: TokenClient,
        user: object = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        scopes = frozenset(scope.split()) if scope else client.allowed_scopes
        issued = self._tokens.issue(client_id=client.client_id, party_id=client.party_id, scopes=scopes)
        return {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.claims["exp"] - issued.claims["iat"],
            "scope": issued.claims["scope"],
        }

    def save_token(self, token: dict[str, Any], request: TokenRequest) -> None:
        request.issued = token

    def send_signal(self, name: str, *args: object, **kwargs: object) -> None:
        return None

    def create_oauth2_request(self, request: TokenRequest) -> TokenRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> tuple[int, Any, Any]:
        return status, body, headers

    def validate(self, request: TokenRequest) -> ClientCredentials:
        """Authenticate the client and validate the grant (no I/O); raises OAuth2Error when refused."""
        for name in ("grant_type", "client_assertion_type", "client_assertion"):
            if not request.form.get(name):
                raise InvalidRequestError(description=f"Missing '{name}' parameter.")
        grant = self.get_token_grant(request)
        grant.validate_token_request()
        claims = request.assertion_claims or {}
        form_client_id = request.form.get("client_id")
        if form_client_id is not None and form_client_id != claims.get("sub"):
            raise InvalidClientError(description="client_id does not match the assertion's subject.")
        return grant  # type: ignore[no-any-return]


def unverified_subject(assertion: str | None) -> str | None:
    """The ``sub`` an assertion claims, read without verification (for throttling and the audit log only)."""
    if not assertion or assertion.count(".") != 2 or len(assertion) > 8192:
        return None
    payload = assertion.split(".")[1]
    try:
        claims = jsontext.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject[:128] if isinstance(subject, str) and subject else None


__all__ = [
    "OAuth2Error",
    "TokenClient",
    "TokenRequest",
    "TokenServer",
    "unverified_subject",
]
