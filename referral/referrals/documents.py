"""Signed document payloads: referrals, removal orders, preservation requests and status updates (DESIGN §4).

These models are the JWS payloads exactly as the parties sign them; ``schemas/`` holds their JSON Schemas.
The cross-field rules (which ``requested_action`` fits which ``type``, what a ``no_action`` must say, ...)
live in the model validators and, where JSON Schema can say them, in ``if``/``then`` clauses of the schemas
too, so clients that validate with the schema alone are refused for the same reasons as by the service.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

import idna
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    model_validator,
)

# TCO Art. 3(3): the provider acts "as soon as possible and, in any event, within one hour of receipt".
REMOVAL_ORDER_TIME_LIMIT: Final = timedelta(hours=1)
MAX_ITEMS: Final = 1000
MAX_URL_LENGTH: Final = 2048
# 9999-12-31T23:59:59Z: every accepted ``iat`` converts to a datetime, so deadline arithmetic cannot overflow.
MAX_IAT: Final = 253_402_300_799

# What ``json_schema_extra`` takes (pydantic does not export its own alias).
JsonDict = dict[str, JsonValue]

_IDENTIFIER_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_SINGLE_LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_COUNTRY_PATTERN = r"^[A-Z]{2}$"
_COUNTRY = re.compile(_COUNTRY_PATTERN)
_PDQ_HASH = re.compile("[0-9a-f]{64}")


class DocumentType(StrEnum):
    """What an authority's signed request is."""

    REFERRAL = "referral"
    REMOVAL_ORDER = "removal_order"
    PRESERVATION_REQUEST = "preservation_request"


class Category(StrEnum):
    """The kind of content a request concerns."""

    TERRORIST_CONTENT = "terrorist_content"
    VIOLENT_EXTREMISM = "violent_extremism"
    INCITEMENT_TO_VIOLENCE = "incitement_to_violence"
    ILLEGAL_HATE_SPEECH = "illegal_hate_speech"
    TERRORIST_FINANCING = "terrorist_financing"
    OTHER = "other"


class TcoReason(StrEnum):
    """The TCO Regulation Art. 2(7) limb under which material is terrorist content."""

    INCITES = "incites"
    SOLICITS = "solicits"
    SOLICITS_PARTICIPATION = "solicits_participation"
    INSTRUCTS = "instructs"
    THREATENS = "threatens"


class RequestedAction(StrEnum):
    """What the authority asks the provider to do."""

    REMOVE = "remove"
    DISABLE_ACCESS = "disable_access"
    REVIEW = "review"
    PRESERVE = "preserve"


class HashAlgorithm(StrEnum):
    """Perceptual hash algorithms providers commonly match against."""

    PDQ = "pdq"
    PHOTODNA = "photodna"
    TMK = "tmk"
    OTHER = "other"


class DataCategory(StrEnum):
    """Kinds of data a preservation request asks to keep."""

    CONTENT = "content"
    SUBSCRIBER = "subscriber"
    TRAFFIC = "traffic"
    ACCOUNT_METADATA = "account_metadata"
    OTHER = "other"


class Status(StrEnum):
    """Every state a referral, removal order or preservation request can be in (DESIGN §5)."""

    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    IN_REVIEW = "in_review"
    INFO_REQUESTED = "info_requested"
    INFO_PROVIDED = "info_provided"
    ACTION_TAKEN = "action_taken"
    PARTIALLY_ACTIONED = "partially_actioned"
    NO_ACTION = "no_action"
    PRESERVED = "preserved"
    PRESERVATION_EXTENDED = "preservation_extended"
    PRESERVATION_RELEASED = "preservation_released"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    CONTESTED = "contested"
    UPHELD = "upheld"
    REINSTATED = "reinstated"


class Outcome(StrEnum):
    """What the provider did about one item."""

    REMOVED = "removed"
    ACCESS_DISABLED = "access_disabled"
    ACCOUNT_SUSPENDED = "account_suspended"
    RESTRICTED = "restricted"
    NOT_FOUND = "not_found"
    NO_ACTION = "no_action"


class NoActionReason(StrEnum):
    """Why a provider did not act (TCO Annex III cases included)."""

    NOT_ILLEGAL = "not_illegal"
    NOT_AGAINST_TERMS = "not_against_terms"
    CONTENT_NOT_FOUND = "content_not_found"
    INSUFFICIENT_INFORMATION = "insufficient_information"
    MANIFEST_ERROR = "manifest_error"
    FORCE_MAJEURE = "force_majeure"
    TECHNICAL_IMPOSSIBILITY = "technical_impossibility"
    OTHER = "other"


# Which requested actions fit which document type. A referral asks for an assessment against the provider's
# terms and never demands an outcome, so it cannot be mistaken for an order; a removal order is TCO Art. 3(1).
REQUESTED_ACTIONS: Final[dict[DocumentType, tuple[RequestedAction, ...]]] = {
    DocumentType.REFERRAL: (RequestedAction.REVIEW,),
    DocumentType.REMOVAL_ORDER: (RequestedAction.REMOVE, RequestedAction.DISABLE_ACCESS),
    DocumentType.PRESERVATION_REQUEST: (RequestedAction.PRESERVE,),
}
# Statuses only the service itself records; no party may sign them.
SERVER_STATUSES: Final = frozenset({Status.SUBMITTED, Status.DELIVERED, Status.EXPIRED})
SIGNED_STATUSES: Final = tuple(status for status in Status if status not in SERVER_STATUSES)
ACTIONED_OUTCOMES: Final = frozenset(
    {Outcome.REMOVED, Outcome.ACCESS_DISABLED, Outcome.ACCOUNT_SUSPENDED, Outcome.RESTRICTED}
)
# Outcomes whose effect can be limited to some territories; ``access_disabled`` must say which.
TERRITORIAL_OUTCOMES: Final = frozenset({Outcome.ACCESS_DISABLED, Outcome.RESTRICTED})
# ``partially_actioned`` must say why the rest was not actioned, as ``no_action`` must.
STATUSES_WITH_REASON: Final = frozenset({Status.NO_ACTION, Status.PARTIALLY_ACTIONED})
STATUSES_WITH_OUTCOMES: Final = frozenset({Status.ACTION_TAKEN, Status.PARTIALLY_ACTIONED, Status.NO_ACTION})
STATUSES_WITH_PRESERVED_UNTIL: Final = frozenset({Status.PRESERVED, Status.PRESERVATION_EXTENDED})
# The question, the answer and the complaint's grounds are the point of these statuses.
STATUSES_WITH_MESSAGE: Final = frozenset({Status.INFO_REQUESTED, Status.INFO_PROVIDED, Status.CONTESTED})

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f]")
# Scheme, authority (up to "/", "?", "#" or the end, without brackets), path, and query before any fragment;
# ASCII only, so that no Unicode case folding reads another letter as an "s".
_HTTP_URL = re.compile(
    r"(https?)://([^/?#\[\]]*)(?=[/?#]|\Z)([^?#]*)(?:\?([^#]*))?", re.IGNORECASE | re.ASCII
)
_ASCII_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ASCII = "".join(map(chr, range(128)))
_HEX_DIGITS = "0123456789ABCDEFabcdef"
# The normal form of every two-digit escape, keyed by its digits as written: escaped unreserved characters
# decoded, any other escape in upper case.
_NORMAL_ESCAPES = {
    digits: chr(int(digits, 16)) if chr(int(digits, 16)) in _UNRESERVED else f"%{digits.upper()}"
    for digits in (high + low for high in _HEX_DIGITS for low in _HEX_DIGITS)
}


def normalise_url(url: str) -> str:
    """The RFC 3986 normal form of an http(s) URL, or ValueError saying why it is refused."""
    if _CONTROL_OR_SPACE.search(url):
        raise ValueError("URL must not contain spaces or control characters (percent-encode them)")
    scheme, netloc, path, query = _split_url(url)
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("URL scheme must be http or https")
    if "@" in netloc:
        # Userinfo hides the real host from a human reader (https://trusted.example@evil.example/).
        raise ValueError("URL must not contain userinfo (user:password@)")
    host, port = _split_authority(netloc)
    authority = _normalise_host(host)
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority += f":{port}"
    path = _normalise_percent_encoding(path) or "/"
    query = _normalise_percent_encoding(query)
    # The fragment never reaches the server, so two URLs differing only there name the same content.
    normalised = f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")
    if len(normalised) > MAX_URL_LENGTH:
        raise ValueError(f"URL is longer than {MAX_URL_LENGTH} characters once normalised")
    return normalised


def _split_url(url: str) -> tuple[str, str, str, str]:
    """Scheme, authority, path and query of a URL free of controls and spaces, as ``urlsplit`` has them.

    An http(s) URL with a plain ASCII authority is split here: ``urlsplit`` costs several times as much, and
    its cache does not help with URLs that are each seen once. Anything else goes through ``urlsplit``.
    """
    match = _HTTP_URL.match(url)
    # urlsplit checks brackets (IPv6) and the NFKC form of a non-ASCII authority: such URLs go through it.
    if match is not None and match.group(2).isascii():
        scheme, netloc, path, query = match.groups("")
        return scheme.lower(), netloc, path, query
    try:
        parts = urlsplit(url)
    except ValueError as error:  # unbalanced or invalid [IPv6] brackets
        raise ValueError(f"URL is malformed: {error}") from error
    return parts.scheme, parts.netloc, parts.path, parts.query


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
    if "%" in component:
        # Every piece after a "%" must start with the escape's two hex digits.
        first, *escaped = component.split("%")
        pieces = [first]
        for piece in escaped:
            normal = _NORMAL_ESCAPES.get(piece[:2])
            if normal is None:
                raise ValueError("URL has a '%' that does not start a two-digit hex escape (write %25)")
            pieces += (normal, piece[2:])
        component = "".join(pieces)
    if component.isascii():
        return component
    try:
        # With every ASCII character safe, quote escapes exactly the UTF-8 bytes of the non-ASCII ones.
        return quote(component, safe=_ASCII)
    except UnicodeEncodeError as error:
        raise ValueError("URL contains a lone surrogate") from error


def _text_not_number(value: Any) -> Any:
    """Refuse numbers where RFC 3339 text is expected: pydantic would read them as Unix times."""
    if isinstance(value, int | float):
        # Not TypeError: pydantic reports only ValueError (and AssertionError) as a validation error.
        raise ValueError("must be an RFC 3339 string, not a number")  # noqa: TRY004
    return value


def _unique(values: list[Any]) -> list[Any]:
    """Refuse repeated list entries: a signed document says each thing once."""
    if len(set(values)) != len(values):
        raise ValueError("entries must be unique")
    return values


def _territories(values: list[str]) -> list[str]:
    """A list of ISO 3166-1 alpha-2 codes, or ``["*"]`` alone for everywhere."""
    _unique(values)
    if values == ["*"]:
        return values
    for code in values:
        if not _COUNTRY.fullmatch(code):
            raise ValueError(f"{code!r} is not an ISO 3166-1 alpha-2 code; use ['*'] alone for everywhere")
    return values


def _moment(iat: int) -> datetime:
    """The aware UTC datetime of a NumericDate."""
    return datetime.fromtimestamp(iat, UTC)


Identifier = Annotated[str, Field(pattern=_IDENTIFIER_PATTERN)]
SingleLine = Annotated[str, Field(pattern=_SINGLE_LINE_PATTERN)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_not_number)]
Day = Annotated[date, BeforeValidator(_text_not_number)]
NumericDate = Annotated[int, Field(strict=True, ge=0, le=MAX_IAT)]
Url = Annotated[
    str,
    Field(max_length=MAX_URL_LENGTH),
    AfterValidator(normalise_url),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_URL_LENGTH,
            "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\s\x00-\x1f\x7f-\x9f]+([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$",
        }
    ),
]
Territories = Annotated[
    list[str],
    Field(min_length=1, max_length=300),
    AfterValidator(_territories),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "prefixItems": [{"const": "*"}], "minItems": 1, "maxItems": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "pattern": _COUNTRY_PATTERN},
                    "minItems": 1,
                    "maxItems": 300,
                    "uniqueItems": True,
                },
            ]
        }
    ),
]

_ISSUER = "Id of the signing party, as registered with the service."
_ISSUED_AT = "When the document was signed: seconds since 1970-01-01T00:00:00Z (JWT NumericDate)."
_DOCUMENT_ID = "Id of this document, unique per issuer; the same jti with other bytes is a conflict."


class PerceptualHash(BaseModel):
    """A perceptual hash of an item, for matching copies the provider holds."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "if": {"properties": {"algorithm": {"const": "pdq"}}},
            "then": {"properties": {"value": {"pattern": "^[0-9a-f]{64}$"}}},
        },
    )

    algorithm: HashAlgorithm = Field(description="Hash algorithm; `other` when it is none of the named ones.")
    value: SingleLine = Field(
        min_length=1,
        max_length=16384,
        description="The hash in the algorithm's usual text form; PDQ as 64 lower-case hex digits.",
    )

    @model_validator(mode="after")
    def _pdq_is_256_bits(self) -> PerceptualHash:
        if self.algorithm is HashAlgorithm.PDQ and not _PDQ_HASH.fullmatch(self.value):
            raise ValueError("a PDQ hash is 64 lower-case hex digits")
        return self


class Item(BaseModel):
    """One piece of content or one account the request is about."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["url"], "properties": {"url": {"type": "string"}}},
                {"required": ["account"], "properties": {"account": {"type": "string"}}},
            ]
        },
    )

    url: Url | None = Field(
        default=None,
        description=(
            "http(s) URL of the content (at most 2048 characters, no userinfo). The service compares it in "
            "normal form: lower-case scheme and host, IDNA host, no default port, no fragment, `/` for an "
            "empty path, upper-case percent-escapes."
        ),
    )
    account: SingleLine | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The account, channel or handle concerned, as the provider's users see it.",
    )
    content_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 of the content's bytes, 64 lower-case hex digits.",
    )
    perceptual_hash: PerceptualHash | None = Field(
        default=None, description="A perceptual hash of the content."
    )
    description: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="What the item is, for the reviewer (never the content itself).",
    )

    @model_validator(mode="after")
    def _names_something(self) -> Item:
        if self.url is None and self.account is None:
            raise ValueError("an item needs a url, an account, or both")
        return self


class StatutoryBasis(BaseModel):
    """A legal instrument and the article in it that empowers the request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instrument: SingleLine = Field(
        min_length=1,
        max_length=256,
        description="The legal instrument, e.g. `Regulation (EU) 2021/784`.",
    )
    article: SingleLine = Field(
        min_length=1, max_length=64, description="The article, e.g. `3` or `60-2 al. 2`."
    )


class TermsOfServiceBasis(BaseModel):
    """The provider's own terms of service clause the content is said to breach."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    terms_of_service_clause: SingleLine = Field(
        min_length=1,
        max_length=256,
        description="The clause of the provider's terms of service, as the provider names it.",
    )


LegalBasis = StatutoryBasis | TermsOfServiceBasis


class Preservation(BaseModel):
    """What to preserve, and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: int = Field(
        default=90,
        strict=True,
        ge=1,
        le=365,
        description="How many days to preserve from receipt; extendable by the provider's later statuses.",
    )
    data_categories: Annotated[list[DataCategory], AfterValidator(_unique)] = Field(
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="The kinds of data to preserve.",
    )
    preserve_until: Timestamp | None = Field(
        default=None,
        json_schema_extra={"readOnly": True},
        description=(
            "Computed by the service (receipt + days, or the provider's `preserved_until`) and shown in its "
            "responses; signers leave it out, and a signed value is not used."
        ),
    )


class Confidentiality(BaseModel):
    """A request not to inform the content owner yet (TCO Art. 11(3))."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    do_not_inform_until: Day = Field(
        description="The provider may inform the content owner from this day on."
    )
    reason: str = Field(
        min_length=10,
        max_length=2000,
        description="Why informing the owner now would harm an investigation or public security.",
    )


# The cross-field rules of ReferralDocument._consistent that JSON Schema can express.
_REFERRAL_SCHEMA_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "referral"}}},
            "then": {
                "properties": {
                    "requested_action": {"const": "review"},
                    "preservation": {"type": "null"},
                }
            },
        },
        {
            "if": {"properties": {"type": {"const": "removal_order"}}},
            "then": {
                "required": ["tco_reasons"],
                "properties": {
                    "requested_action": {"enum": ["remove", "disable_access"]},
                    "category": {"const": "terrorist_content"},
                    "tco_reasons": {"minItems": 1},
                    "legal_basis": {"required": ["instrument"]},
                    "preservation": {"type": "null"},
                },
            },
        },
        {
            "if": {"properties": {"type": {"const": "preservation_request"}}},
            "then": {
                "required": ["preservation"],
                "properties": {
                    "requested_action": {"const": "preserve"},
                    "legal_basis": {"required": ["instrument"]},
                    "preservation": {"type": "object"},
                },
            },
        },
        {
            "if": {"required": ["tco_reasons"], "properties": {"tco_reasons": {"minItems": 1}}},
            "then": {"properties": {"category": {"const": "terrorist_content"}}},
        },
    ]
}


class ReferralDocument(BaseModel):
    """The signed payload (`typ` `referral+jws`) of a referral, removal order or preservation request."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_REFERRAL_SCHEMA_RULES)

    iss: Identifier = Field(description=_ISSUER)
    iat: NumericDate = Field(description=_ISSUED_AT)
    jti: Identifier = Field(description=_DOCUMENT_ID)
    type: DocumentType = Field(
        description="`referral`: review against the provider's terms (voluntary); `removal_order`: binding "
        "TCO Art. 3 order, act within one hour of receipt; `preservation_request`: keep content and data."
    )
    addressee: Identifier = Field(description="Id of the provider party the document is addressed to.")
    items: list[Item] = Field(
        min_length=1, max_length=MAX_ITEMS, description="The content or accounts concerned (1 to 1000)."
    )
    category: Category = Field(
        description="Kind of content. `terrorist_content` is TCO Art. 2(7) material, and the only category a "
        "removal order may have; `violent_extremism` is violent extremist material that falls short of it."
    )
    tco_reasons: Annotated[list[TcoReason], AfterValidator(_unique)] = Field(
        default_factory=list,
        json_schema_extra={"uniqueItems": True},
        description="Which TCO Art. 2(7) limbs the material meets: (a) `incites`, (b) `solicits`, (c) "
        "`solicits_participation`, (d) `instructs`, (e) `threatens`. Required for removal orders; only for "
        "`terrorist_content`.",
    )
    legal_basis: LegalBasis = Field(
        description="The instrument and article empowering the request, or for a referral the provider's "
        "terms of service clause. Removal orders and preservation requests need an instrument."
    )
    statement_of_reasons: str = Field(
        min_length=10,
        max_length=10000,
        description="Why the content falls under the category and legal basis (TCO Art. 3(4)(b)).",
    )
    requested_action: RequestedAction = Field(
        description="`review` for referrals; `remove` or `disable_access` for removal orders; `preserve` for "
        "preservation requests."
    )
    territorial_scope: Territories = Field(
        description='ISO 3166-1 alpha-2 codes of the territories concerned, or `["*"]` for everywhere.'
    )
    deadline: Timestamp | None = Field(
        default=None,
        description="When the authority expects an answer; not before `iat`. A removal order is due one hour "
        "after receipt, or at this time if later.",
    )
    preservation: Preservation | None = Field(
        default=None, description="What to preserve and for how long; exactly for preservation requests."
    )
    confidentiality: Confidentiality | None = Field(
        default=None, description="Do not inform the content owner before a date (TCO Art. 11(3))."
    )
    language: str = Field(
        pattern=r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?$",
        description="BCP 47 tag of the language of the free text, e.g. `en`, `de-AT`, `sr-Latn-RS`.",
    )
    case_reference: SingleLine | None = Field(
        default=None, min_length=1, max_length=128, description="The authority's own case reference."
    )
    related_to: Identifier | None = Field(
        default=None,
        description="Id of an earlier referral this one follows up, e.g. the removal order a preservation "
        "request accompanies.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ReferralDocument:
        problems = []
        allowed_actions = REQUESTED_ACTIONS[self.type]
        if self.requested_action not in allowed_actions:
            problems.append(
                f"requested_action {self.requested_action.value!r} does not fit type {self.type.value!r} "
                f"(allowed: {', '.join(action.value for action in allowed_actions)})"
            )
        is_preservation = self.type is DocumentType.PRESERVATION_REQUEST
        if is_preservation and self.preservation is None:
            problems.append("a preservation_request needs preservation (days and data_categories)")
        if not is_preservation and self.preservation is not None:
            problems.append(f"preservation is only for preservation requests, not for a {self.type.value}")
        if self.type is DocumentType.REMOVAL_ORDER:
            if not self.tco_reasons:
                problems.append("a removal_order needs tco_reasons (the TCO Art. 2(7) limbs it meets)")
            if self.category is not Category.TERRORIST_CONTENT:
                problems.append("a removal_order is only for category 'terrorist_content' (TCO Art. 3)")
        if self.tco_reasons and self.category is not Category.TERRORIST_CONTENT:
            problems.append("tco_reasons are only for category 'terrorist_content'")
        if self.type is not DocumentType.REFERRAL and not isinstance(self.legal_basis, StatutoryBasis):
            problems.append(f"a {self.type.value} needs a legal_basis with an instrument and an article")
        if self.addressee == self.iss:
            problems.append("addressee must be another party than the issuer")
        issued_at = _moment(self.iat)
        if self.deadline is not None and self.deadline < issued_at:
            problems.append("deadline must not be before iat")
        if self.confidentiality is not None and self.confidentiality.do_not_inform_until < issued_at.date():
            problems.append("confidentiality.do_not_inform_until must not be before the day of iat")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ItemOutcome._territories_fit_outcome in JSON Schema.
def _statuses(statuses: frozenset[Status]) -> list[JsonValue]:
    """The values of some statuses in declaration order, for the JSON Schema."""
    return [status.value for status in Status if status in statuses]


def _outcomes(outcomes: frozenset[Outcome]) -> list[JsonValue]:
    """The values of some outcomes in declaration order, for the JSON Schema."""
    return [outcome.value for outcome in Outcome if outcome in outcomes]


_ITEM_OUTCOME_SCHEMA_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"outcome": {"const": "access_disabled"}}},
            "then": {"required": ["territories"], "properties": {"territories": {"type": "array"}}},
        },
        {
            "if": {"properties": {"outcome": {"enum": _outcomes(frozenset(Outcome) - TERRITORIAL_OUTCOMES)}}},
            "then": {"properties": {"territories": {"type": "null"}}},
        },
    ]
}


class ItemOutcome(BaseModel):
    """What the provider did about one item of the referral."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_ITEM_OUTCOME_SCHEMA_RULES)

    index: int = Field(
        strict=True, ge=0, lt=MAX_ITEMS, description="Zero-based index into the referral's `items`."
    )
    outcome: Outcome = Field(description="What was done about the item.")
    territories: Territories | None = Field(
        default=None,
        description='Where access was disabled or restricted (ISO 3166-1 alpha-2, or `["*"]`); required for '
        "`access_disabled`, allowed for `restricted`, refused otherwise.",
    )

    @model_validator(mode="after")
    def _territories_fit_outcome(self) -> ItemOutcome:
        if self.outcome is Outcome.ACCESS_DISABLED and self.territories is None:
            raise ValueError("outcome 'access_disabled' needs territories")
        if self.outcome not in TERRITORIAL_OUTCOMES and self.territories is not None:
            raise ValueError(f"outcome {self.outcome.value!r} applies everywhere and takes no territories")
        return self


def _signed_status(status: Status) -> Status:
    """Refuse the statuses only the service records."""
    if status in SERVER_STATUSES:
        raise ValueError(f"status {status.value!r} is recorded by the service and cannot be signed")
    return status


SignedStatus = Annotated[
    Status,
    AfterValidator(_signed_status),
    WithJsonSchema({"type": "string", "enum": [status.value for status in SIGNED_STATUSES]}),
]


# The cross-field rules of StatusDocument._consistent that JSON Schema can express.
_STATUS_SCHEMA_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"properties": {"status": {"enum": _statuses(STATUSES_WITH_REASON)}}},
            "then": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
            "else": {"properties": {"reason": {"type": "null"}}},
        },
        {
            "if": {"required": ["reason"], "properties": {"reason": {"const": "other"}}},
            "then": {"required": ["reason_text"], "properties": {"reason_text": {"type": "string"}}},
        },
        {
            "if": {"properties": {"reason": {"type": "null"}}},
            "then": {"properties": {"reason_text": {"type": "null"}}},
        },
        {
            "if": {"properties": {"status": {"enum": _statuses(STATUSES_WITH_PRESERVED_UNTIL)}}},
            "then": {
                "required": ["preserved_until"],
                "properties": {"preserved_until": {"type": "string"}},
            },
            "else": {"properties": {"preserved_until": {"type": "null"}}},
        },
        {
            "if": {"properties": {"status": {"enum": _statuses(STATUSES_WITH_MESSAGE)}}},
            "then": {"required": ["message"], "properties": {"message": {"type": "string"}}},
        },
        {
            "if": {"properties": {"status": {"const": "action_taken"}}},
            "then": {
                "required": ["items"],
                "properties": {
                    "items": {
                        "minItems": 1,
                        "items": {"properties": {"outcome": {"enum": _outcomes(ACTIONED_OUTCOMES)}}},
                    }
                },
            },
        },
        {
            "if": {"properties": {"status": {"const": "partially_actioned"}}},
            "then": {
                "required": ["items"],
                "properties": {
                    "items": {"contains": {"properties": {"outcome": {"enum": _outcomes(ACTIONED_OUTCOMES)}}}}
                },
            },
        },
        {
            "if": {"properties": {"status": {"const": "no_action"}}},
            "then": {
                "properties": {
                    "items": {
                        "items": {
                            "properties": {
                                "outcome": {"enum": _outcomes(frozenset(Outcome) - ACTIONED_OUTCOMES)}
                            }
                        }
                    }
                }
            },
        },
        {
            "if": {"properties": {"status": {"not": {"enum": _statuses(STATUSES_WITH_OUTCOMES)}}}},
            "then": {"properties": {"items": {"maxItems": 0}}},
        },
    ]
}


class StatusDocument(BaseModel):
    """The signed payload (`typ` `status+jws`) of a status update on a referral."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_STATUS_SCHEMA_RULES)

    iss: Identifier = Field(description=_ISSUER)
    iat: NumericDate = Field(description=_ISSUED_AT)
    jti: Identifier = Field(description=_DOCUMENT_ID)
    referral_id: Identifier = Field(description="Id the service gave the referral in its receipt.")
    status: SignedStatus = Field(
        description="The new status. Signed by the provider, except `info_provided` and `withdrawn`, which "
        "the authority signs; `submitted`, `delivered` and `expired` are recorded by the service only."
    )
    items: list[ItemOutcome] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="Per-item outcomes: required for `action_taken` (all actioned) and `partially_actioned` "
        "(at least one actioned), allowed for `no_action` (`not_found` or `no_action`), refused otherwise.",
    )
    reason: NoActionReason | None = Field(
        default=None,
        description="Why not (all) items were actioned; required for `no_action` and `partially_actioned`, "
        "refused otherwise.",
    )
    reason_text: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Explanation of the reason; required when `reason` is `other`.",
    )
    effective_at: Timestamp | None = Field(default=None, description="When the action took effect.")
    preserved_until: Timestamp | None = Field(
        default=None,
        description="Until when the data is preserved; required for `preserved` and `preservation_extended`, "
        "refused otherwise.",
    )
    message: str | None = Field(
        default=None,
        min_length=1,
        max_length=5000,
        description="Free text: the question of `info_requested`, the answer of `info_provided` and the "
        "grounds of `contested` (all three required), or a note on any other status.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> StatusDocument:
        problems = [*self._outcome_problems(), *self._field_problems()]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _outcome_problems(self) -> list[str]:
        """Problems with ``items`` for this status."""
        problems = []
        indexes = [outcome.index for outcome in self.items]
        if len(set(indexes)) != len(indexes):
            problems.append("items must name each index once")
        outcomes = {outcome.outcome for outcome in self.items}
        status = self.status.value
        if self.status not in STATUSES_WITH_OUTCOMES and self.items:
            problems.append(f"status {status!r} takes no item outcomes")
        elif self.status is Status.ACTION_TAKEN and (not outcomes or not outcomes <= ACTIONED_OUTCOMES):
            problems.append(f"status {status!r} needs items, each with an outcome that acts on it")
        elif self.status is Status.PARTIALLY_ACTIONED and not outcomes & ACTIONED_OUTCOMES:
            problems.append(f"status {status!r} needs items, at least one with an outcome that acts on it")
        elif self.status is Status.NO_ACTION and outcomes & ACTIONED_OUTCOMES:
            problems.append(f"status {status!r} allows only the outcomes 'not_found' and 'no_action'")
        return problems

    def _field_problems(self) -> list[str]:
        """Problems with the fields that some statuses require and others refuse."""
        problems = []
        status = self.status.value
        if self.status in STATUSES_WITH_REASON and self.reason is None:
            problems.append(f"status {status!r} needs a reason")
        if self.status not in STATUSES_WITH_REASON and self.reason is not None:
            problems.append(f"status {status!r} takes no reason")
        if self.reason is NoActionReason.OTHER and self.reason_text is None:
            problems.append("reason 'other' needs reason_text")
        if self.reason is None and self.reason_text is not None:
            problems.append("reason_text needs a reason")
        if self.status in STATUSES_WITH_PRESERVED_UNTIL and self.preserved_until is None:
            problems.append(f"status {status!r} needs preserved_until")
        if self.status not in STATUSES_WITH_PRESERVED_UNTIL and self.preserved_until is not None:
            problems.append(f"status {status!r} takes no preserved_until")
        if self.preserved_until is not None and self.preserved_until <= _moment(self.iat):
            problems.append("preserved_until must be after iat")
        if self.status in STATUSES_WITH_MESSAGE and self.message is None:
            problems.append(f"status {status!r} needs a message")
        return problems


def outcome_problems(item_count: int, status: StatusDocument) -> list[str]:
    """Why the status's item outcomes do not fit a referral of ``item_count`` items; empty when they do."""
    count = item_count
    problems = [
        f"items[{position}].index {outcome.index} is not an item of the referral (it has {count})"
        for position, outcome in enumerate(status.items)
        if outcome.index >= count
    ]
    actioned = {outcome.index for outcome in status.items if outcome.outcome in ACTIONED_OUTCOMES}
    if status.status is Status.ACTION_TAKEN and not actioned >= set(range(count)):
        problems.append("action_taken needs an actioned outcome for every item; use partially_actioned")
    if status.status is Status.PARTIALLY_ACTIONED and actioned >= set(range(count)):
        problems.append("every item was actioned; use action_taken")
    return problems


def _aware(moment: datetime, name: str) -> datetime:
    """The same instant in UTC, refusing a naive datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")
    return moment.astimezone(UTC)


def deadline_for(document: ReferralDocument, received_at: datetime) -> datetime | None:
    """When the provider's answer is due: for removal orders one hour after receipt, or the later deadline."""
    received_at = _aware(received_at, "received_at")
    deadline = None if document.deadline is None else document.deadline.astimezone(UTC)
    if document.type is not DocumentType.REMOVAL_ORDER:
        return deadline
    statutory = received_at + REMOVAL_ORDER_TIME_LIMIT
    return statutory if deadline is None else max(statutory, deadline)


def preservation_expires_at(
    document: ReferralDocument, received_at: datetime, preserved_until: datetime | None = None
) -> datetime | None:
    """When a preservation ends: the provider's latest ``preserved_until``, else receipt plus the days."""
    received_at = _aware(received_at, "received_at")
    if document.preservation is None:
        return None
    if preserved_until is not None:
        return _aware(preserved_until, "preserved_until")
    return received_at + timedelta(days=document.preservation.days)
