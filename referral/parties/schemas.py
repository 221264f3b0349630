"""Request bodies of the party administration API."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from referral.core import errors
from referral.core.web import json_body
from referral.parties.countries import is_country_code

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartyCreate(_Body):
    """``POST /v1/parties``."""

    kind: Literal["authority", "provider", "observer", "operator"]
    name: str = Field(min_length=1, max_length=200)
    country: str = Field(min_length=2, max_length=2)
    contact: str | None = Field(default=None, max_length=320)

    @field_validator("name")
    @classmethod
    def _name_is_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("country")
    @classmethod
    def _country_is_iso_3166(cls, value: str) -> str:
        if not is_country_code(value):
            raise ValueError("must be an ISO 3166-1 alpha-2 code in upper case, e.g. DE")
        return value


class KeyCreate(_Body):
    """``POST /v1/parties/{id}/keys``: a public JWK and an optional validity window."""

    jwk: dict[str, Any]
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None


class ClientCreate(_Body):
    """``POST /v1/parties/{id}/clients``."""

    jwk: dict[str, Any]
    name: str | None = Field(default=None, max_length=200)


class Revocation(_Body):
    """Body of a revocation: why."""

    reason: str = Field(min_length=1, max_length=500)


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as the ``errors`` member of a problem."""
    return [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """The JSON body validated as ``model``; 415 for another media type, 422 listing each invalid field."""
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("send the request body as application/json")
    document = await json_body(request)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise errors.ValidationFailed("the request body is invalid", errors=validation_errors(exc)) from exc
