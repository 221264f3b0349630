"""What the SDK raises: one base class, RFC 9457 problems by status family, and verification failures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
# A non-JSON error body is quoted in the exception only this far: it may be an HTML page from a proxy.
_MAX_QUOTED_BODY = 300


class ReferralClientError(Exception):
    """Base of every error the SDK raises."""


class ConfigurationError(ReferralClientError):
    """Credentials, keys or a profile are missing or unusable."""


class TransportError(ReferralClientError):
    """The service could not be reached, or the connection broke, after the retries allowed."""


class VerificationError(ReferralClientError):
    """A signature, receipt, checkpoint or proof did not verify; the message says which check failed."""


class UnknownKeyError(VerificationError):
    """A signature names a key (``kid``) that the service does not publish."""


class WebhookVerificationError(VerificationError):
    """A webhook delivery is not authentic: headers missing, timestamp out of tolerance, or bad signatures."""


class NotSequencedError(ReferralClientError):
    """The audit entry exists but is not yet in a signed checkpoint; try again shortly."""


class ProblemError(ReferralClientError):
    """The service refused a request with an RFC 9457 ``application/problem+json`` answer."""

    def __init__(
        self,
        *,
        status: int,
        type: str = "about:blank",
        title: str,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        extensions: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        self.request_id = request_id
        self.extensions = dict(extensions or {})
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        message = f"{self.status} {self.title}"
        if self.detail and self.detail != self.title:
            message += f": {self.detail}"
        if self.request_id:
            message += f" (request id {self.request_id})"
        return message

    @property
    def slug(self) -> str:
        """The last segment of ``type``, which clients switch on (e.g. ``jti-conflict``)."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]


class ClientProblemError(ProblemError):
    """A 4xx answer: the request was refused as sent."""


class BadRequestError(ClientProblemError):
    """400: the request is malformed (e.g. not a compact JWS)."""


class AuthenticationError(ClientProblemError):
    """401: the client assertion or access token was refused."""


class PermissionDeniedError(ClientProblemError):
    """403: the token lacks the scope, or the party may not do this."""


class NotFoundError(ClientProblemError):
    """404: no such resource, or not one this party may see."""


class ConflictError(ClientProblemError):
    """409: e.g. a ``jti`` reused for another document, or a status that may not follow the current one."""


class ValidationFailedError(ClientProblemError):
    """422: the content is invalid; ``errors`` lists each field."""


class RateLimitedError(ClientProblemError):
    """429: too many requests; ``retry_after`` says when to try again."""


class ServerError(ProblemError):
    """A 5xx answer."""


class ServiceUnavailableError(ServerError):
    """503: the service cannot serve now (e.g. its database is unreachable)."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationFailedError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def problem_class(status: int) -> type[ProblemError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ClientProblemError


def problem_from_response(
    status: int,
    body: bytes,
    *,
    reason: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> ProblemError:
    """The exception for an error response, from its problem+json body when it has one."""
    document: Any = None
    try:
        document = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        document = None
    cls = problem_class(status)
    if not isinstance(document, dict):
        text = body.decode("utf-8", "replace").strip()[:_MAX_QUOTED_BODY] if body else None
        return cls(
            status=status,
            title=reason or "HTTP error",
            detail=text or None,
            request_id=request_id,
            retry_after=retry_after,
        )
    known = {"type", "title", "status", "detail", "errors", "request_id"}
    errors = document.get("errors")
    return cls(
        status=status,
        type=str(document.get("type") or "about:blank"),
        title=str(document.get("title") or reason or "HTTP error"),
        detail=str(document["detail"]) if document.get("detail") is not None else None,
        errors=[item for item in errors if isinstance(item, dict)] if isinstance(errors, list) else None,
        request_id=str(document.get("request_id") or request_id or "") or None,
        extensions={key: value for key, value in document.items() if key not in known},
        retry_after=retry_after,
    )
