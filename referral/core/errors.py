"""RFC 9457 problem details: one exception class per kind of failure, rendered by one middleware."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

PROBLEM_BASE = "https://referral.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """An error that the client is told about as ``application/problem+json``.

    ``slug`` is the stable last segment of the ``type`` URI; clients switch on it.
    """

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def type_uri(self) -> str:
        """The stable ``type`` member."""
        return PROBLEM_BASE + self.slug

    def body(self, *, instance: str | None, request_id: str | None) -> dict[str, Any]:
        """The JSON object sent to the client."""
        document: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            document["instance"] = instance
        if request_id is not None:
            document["request_id"] = request_id
        document.update(self.extensions)
        return document


class BadRequest(Problem):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class ValidationFailed(Problem):
    """The request was understood but its content is invalid; ``errors`` lists each field."""

    status = 422
    slug = "validation-failed"
    title = "Validation failed"

    def __init__(self, detail: str, *, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(detail, errors=[dict(error) for error in errors])


class Unauthorized(Problem):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(Problem):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(Problem):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(Problem):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class NotAcceptable(Problem):
    status = 406
    slug = "not-acceptable"
    title = "Not acceptable"


class Conflict(Problem):
    status = 409
    slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(Problem):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(Problem):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class RequestTimeout(Problem):
    status = 408
    slug = "request-timeout"
    title = "Request timeout"


class TooManyRequests(Problem):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"


class ServiceUnavailable(Problem):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


class InternalError(Problem):
    """Anything unexpected; its detail never carries the exception text or a traceback."""

    status = 500
    slug = "internal-error"
    title = "Internal server error"
