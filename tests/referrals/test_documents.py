"""The signed document models, their checked-in JSON Schemas and the examples in ``docs/api/examples``."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from referral.referrals.documents import (
    Item,
    ReferralDocument,
    StatusDocument,
    deadline_for,
    normalise_url,
    outcome_problems,
    preservation_expires_at,
)
from referral.referrals.schemas import main as schemas_main
from referral.referrals.schemas import schema_documents, schema_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "api" / "examples"
SCHEMAS = ROOT / "schemas"

REFERRAL_EXAMPLES = ["referral.json", "removal_order.json", "preservation_request.json"]
# Every status a party signs; submitted, delivered and expired are the service's own.
SIGNED_STATUSES = [
    "acknowledged",
    "in_review",
    "info_requested",
    "info_provided",
    "action_taken",
    "partially_actioned",
    "no_action",
    "preserved",
    "preservation_extended",
    "preservation_released",
    "withdrawn",
    "contested",
    "upheld",
    "reinstated",
]
STATUS_EXAMPLES = [f"status-{status}.json" for status in SIGNED_STATUSES]
DELETE = object()


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return document


def validator(schema_file: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
    # Formats are only annotations in 2020-12; asserting them checks that examples carry real RFC 3339 times.
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


REFERRAL_SCHEMA = validator("referral.schema.json")
STATUS_SCHEMA = validator("status.schema.json")


def patched(name: str, **changes: Any) -> dict[str, Any]:
    """An example with top-level members replaced, or removed where the value is DELETE."""
    document = copy.deepcopy(example(name))
    for key, value in changes.items():
        if value is DELETE:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def schema_errors(schema: Draft202012Validator, document: dict[str, Any]) -> list[str]:
    return [error.message for error in schema.iter_errors(document)]


def assert_refused(
    model: type[ReferralDocument | StatusDocument],
    document: dict[str, Any],
    message: str,
    *,
    by_schema: bool = True,
) -> None:
    """The model refuses the document saying ``message``; so does the JSON Schema, where it can say it."""
    with pytest.raises(ValidationError) as refusal:
        model.model_validate(document)
    assert message in str(refusal.value)
    if by_schema:
        schema = REFERRAL_SCHEMA if model is ReferralDocument else STATUS_SCHEMA
        assert schema_errors(schema, document), "the JSON Schema accepted what the model refuses"


# --- examples ---------------------------------------------------------------------------------------------


def test_there_is_an_example_of_every_document_and_every_signed_status() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.json")) == sorted(
        REFERRAL_EXAMPLES + STATUS_EXAMPLES
    )


@pytest.mark.parametrize("name", REFERRAL_EXAMPLES)
def test_referral_examples_validate_against_model_and_schema(name: str) -> None:
    payload = example(name)
    document = ReferralDocument.model_validate_json((EXAMPLES / name).read_bytes())
    assert document.type == name.removesuffix(".json")
    assert schema_errors(REFERRAL_SCHEMA, payload) == []


@pytest.mark.parametrize("name", STATUS_EXAMPLES)
def test_status_examples_validate_against_model_and_schema(name: str) -> None:
    payload = example(name)
    document = StatusDocument.model_validate_json((EXAMPLES / name).read_bytes())
    assert f"status-{document.status}.json" == name
    assert schema_errors(STATUS_SCHEMA, payload) == []


@pytest.mark.parametrize(
    ("status_name", "referral_name"),
    [
        ("status-action_taken.json", "removal_order.json"),
        ("status-partially_actioned.json", "referral.json"),
    ],
)
def test_example_outcomes_fit_their_referral(status_name: str, referral_name: str) -> None:
    status = StatusDocument.model_validate(example(status_name))
    referral = ReferralDocument.model_validate(example(referral_name))
    assert outcome_problems(len(referral.items), status) == []


# --- schemas ----------------------------------------------------------------------------------------------


def test_checked_in_schemas_are_the_generated_ones() -> None:
    generated = schema_documents()
    assert sorted(generated) == ["referral.schema.json", "status.schema.json"]
    for name, document in generated.items():
        checked_in = (SCHEMAS / name).read_text(encoding="utf-8")
        assert json.loads(checked_in) == document, f"{name} drifted: run python -m referral.referrals.schemas"
        assert checked_in == schema_text(document)


@pytest.mark.parametrize("name", ["referral.schema.json", "status.schema.json"])
def test_schemas_are_draft_2020_12_with_their_id(name: str) -> None:
    document = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"https://referral.dev/schemas/{name}"
    assert document["additionalProperties"] is False


def test_schema_command_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = ["--directory", str(tmp_path)]
    assert schemas_main(["--check", *directory]) == 1
    assert "referral.schema.json, status.schema.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "--check must not write"

    assert schemas_main(directory) == 0
    assert schemas_main(["--check", *directory]) == 0
    assert (tmp_path / "status.schema.json").read_text(encoding="utf-8") == (
        SCHEMAS / "status.schema.json"
    ).read_text(encoding="utf-8")

    drifted = tmp_path / "status.schema.json"
    drifted.write_text(
        drifted.read_text(encoding="utf-8").replace('"reinstated"', '"restored"'), encoding="utf-8"
    )
    assert schemas_main(["--check", *directory]) == 1
    assert "status.schema.json" in capsys.readouterr().err


def test_schema_module_runs_as_a_command_against_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "referral.referrals.schemas", "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- URLs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normal_form"),
    [
        ("HTTP://Example.COM", "http://example.com/"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:080/a", "http://example.com/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
        ("http://example.com:443/a", "http://example.com:443/a"),
        ("https://example.com:/a", "https://example.com/a"),
        ("https://example.com/a#section-2", "https://example.com/a"),
        ("https://example.com#top", "https://example.com/"),
        ("https://example.com?q=1", "https://example.com/?q=1"),
        ("https://example.com/a?", "https://example.com/a"),
        ("https://example.com/a%2fb%3A", "https://example.com/a%2Fb%3A"),
        ("https://example.com/%7euser/%41%2D%5F%2e", "https://example.com/~user/A-_."),
        ("https://example.com/s?q=%c3%a4&x=%2b", "https://example.com/s?q=%C3%A4&x=%2B"),
        ("https://example.com/über?q=ä", "https://example.com/%C3%BCber?q=%C3%A4"),
        ("https://Bücher.Example/", "https://xn--bcher-kva.example/"),
        ("https://\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com/", "https://example.com/"),
        ("https://XN--BCHER-KVA.example/", "https://xn--bcher-kva.example/"),
        ("https://user_content.example.com/x", "https://user_content.example.com/x"),
        ("http://192.0.2.1:8080/x", "http://192.0.2.1:8080/x"),
        ("http://[2001:DB8:0:0::0001]:443/", "http://[2001:db8::1]:443/"),
        ("https://[2001:db8::1]:443/", "https://[2001:db8::1]/"),
        ("https://example.com/a/../b/./c", "https://example.com/a/../b/./c"),
    ],
)
def test_urls_are_normalised(url: str, normal_form: str) -> None:
    assert normalise_url(url) == normal_form
    assert normalise_url(normal_form) == normal_form, "the normal form is a fixed point"
    assert Item(url=url).url == normal_form


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/file", "scheme must be http or https"),
        ("javascript:alert(1)", "scheme must be http or https"),
        ("example.com/path", "scheme must be http or https"),
        ("//example.com/path", "scheme must be http or https"),
        ("https://user:secret@example.com/", "userinfo"),
        ("https://trusted.example@evil.example/", "userinfo"),
        ("https://example.com/a b", "spaces or control characters"),
        (" https://example.com/", "spaces or control characters"),
        ("https://example.com/\tx", "spaces or control characters"),
        ("https://example.com/\nx", "spaces or control characters"),
        ("https://example.com/\x00", "spaces or control characters"),
        ("https://example.com/\x7f", "spaces or control characters"),
        ("https://example.com/\x85", "spaces or control characters"),
        ("https:///path", "has no host"),
        ("https://:443/path", "has no host"),
        ("https://example.com:65536/", "port must be a number"),
        ("https://example.com:8o/", "port must be a number"),
        ("https://example.com:-1/", "port must be a number"),
        ("https://[2001:db8::1/", "URL is malformed"),
        ("https://example]/", "URL is malformed"),
        ("https://[2001:db8::g]/", "URL is malformed"),
        ("https://[2001:db8::1]x/", "after its IPv6 address"),
        ("https://[v1.fe80::a]/", "invalid IPv6 address"),
        ("https://exa<mple.com/", "domain name or an IP address"),
        ("https://example..com/", "domain name or an IP address"),
        ("https://exa%41mple.com/", "domain name or an IP address"),
        ("https://\u2488.example/", "internationalised domain name"),
        ("https://example.com/100%", "two-digit hex escape"),
        ("https://example.com/?q=%zz", "two-digit hex escape"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_url(url)
    with pytest.raises(ValidationError, match=message):
        Item(url=url)


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        normalise_url("https://example.com/\ud800")
    with pytest.raises(ValidationError, match="valid string"):
        Item(url="https://example.com/\ud800")


def test_urls_are_limited_to_2048_characters_before_and_after_normalisation() -> None:
    prefix = "https://example.com/"
    longest = prefix + "a" * (2048 - len(prefix))
    assert Item(url=longest).url == longest
    with pytest.raises(ValidationError, match="at most 2048 characters"):
        Item(url=longest + "a")
    # Each "ü" grows to "%C3%BC" when escaped, so this input is short but its normal form is not.
    with pytest.raises(ValidationError, match="longer than 2048 characters once normalised"):
        Item(url=prefix + "ü" * 400)


def test_the_schema_refuses_what_the_url_pattern_can_see() -> None:
    for url in ["ftp://example.com/", "https://user@example.com/", "https://example.com/a b", "example.com"]:
        items = [{"url": url}]
        assert_refused(ReferralDocument, patched("referral.json", items=items), "URL")


# --- cross-field rules ------------------------------------------------------------------------------------

TOS_BASIS = {"terms_of_service_clause": "Community Standards 4.2"}
PRESERVATION = {"days": 90, "data_categories": ["content"]}

REFERRAL_RULES: list[tuple[str, dict[str, Any], str, bool]] = [
    ("referral.json", {"requested_action": "remove"}, "does not fit type 'referral' (allowed: review)", True),
    ("referral.json", {"requested_action": "preserve"}, "does not fit type 'referral'", True),
    (
        "removal_order.json",
        {"requested_action": "review"},
        "does not fit type 'removal_order' (allowed: remove, disable_access)",
        True,
    ),
    ("removal_order.json", {"requested_action": "preserve"}, "does not fit type 'removal_order'", True),
    ("preservation_request.json", {"requested_action": "remove"}, "(allowed: preserve)", True),
    (
        "preservation_request.json",
        {"preservation": DELETE},
        "a preservation_request needs preservation",
        True,
    ),
    ("preservation_request.json", {"preservation": None}, "a preservation_request needs preservation", True),
    ("referral.json", {"preservation": PRESERVATION}, "preservation is only for preservation requests", True),
    (
        "removal_order.json",
        {"preservation": PRESERVATION},
        "preservation is only for preservation requests",
        True,
    ),
    ("removal_order.json", {"tco_reasons": DELETE}, "a removal_order needs tco_reasons", True),
    ("removal_order.json", {"tco_reasons": []}, "a removal_order needs tco_reasons", True),
    (
        "removal_order.json",
        {"category": "violent_extremism", "tco_reasons": DELETE},
        "a removal_order is only for category 'terrorist_content'",
        True,
    ),
    ("referral.json", {"category": "violent_extremism"}, "tco_reasons are only for category", True),
    (
        "removal_order.json",
        {"legal_basis": TOS_BASIS},
        "a removal_order needs a legal_basis with an instrument",
        True,
    ),
    (
        "preservation_request.json",
        {"legal_basis": TOS_BASIS},
        "a preservation_request needs a legal_basis with an instrument",
        True,
    ),
    # JSON Schema cannot compare two members' values: these rules are the model's alone.
    (
        "referral.json",
        {"addressee": example("referral.json")["iss"]},
        "addressee must be another party",
        False,
    ),
    ("referral.json", {"deadline": "2025-03-11T14:39:59Z"}, "deadline must not be before iat", False),
    (
        "removal_order.json",
        {"confidentiality": {"do_not_inform_until": "2025-03-09", "reason": "Ongoing investigation."}},
        "do_not_inform_until must not be before the day of iat",
        False,
    ),
]


@pytest.mark.parametrize(("name", "changes", "message", "by_schema"), REFERRAL_RULES)
def test_referral_cross_field_rules_are_refused_with_a_message(
    name: str, changes: dict[str, Any], message: str, by_schema: bool
) -> None:
    assert_refused(ReferralDocument, patched(name, **changes), message, by_schema=by_schema)


def test_every_broken_rule_is_reported_at_once() -> None:
    document = patched(
        "referral.json",
        requested_action="remove",
        category="other",
        addressee=example("referral.json")["iss"],
    )
    with pytest.raises(ValidationError) as refusal:
        ReferralDocument.model_validate(document)
    message = str(refusal.value)
    for part in ["does not fit type", "tco_reasons are only for", "addressee must be another party"]:
        assert part in message


def test_a_referral_may_rest_on_a_statute_and_needs_no_tco_reasons() -> None:
    document = patched(
        "referral.json",
        legal_basis={"instrument": "Code pénal", "article": "421-2-5"},
        tco_reasons=DELETE,
        category="violent_extremism",
    )
    assert ReferralDocument.model_validate(document).tco_reasons == []
    assert schema_errors(REFERRAL_SCHEMA, document) == []


def test_a_deadline_at_iat_is_allowed() -> None:
    document = patched("referral.json", deadline="2025-03-11T14:40:00Z")
    assert ReferralDocument.model_validate(document).deadline == datetime(2025, 3, 11, 14, 40, tzinfo=UTC)


FIELD_RULES: list[tuple[str, dict[str, Any], str]] = [
    ("referral.json", {"items": []}, "at least 1 item"),
    (
        "referral.json",
        {"items": [{"description": "no url, no account"}]},
        "an item needs a url, an account, or both",
    ),
    (
        "referral.json",
        {"items": [{"url": None, "account": None}]},
        "an item needs a url, an account, or both",
    ),
    ("referral.json", {"items": [{"account": ""}]}, "at least 1 character"),
    ("referral.json", {"items": [{"account": "a" * 257}]}, "at most 256 characters"),
    ("referral.json", {"items": [{"account": "line\nbreak"}]}, "should match pattern"),
    ("referral.json", {"items": [{"account": "x", "content_sha256": "AB" * 32}]}, "should match pattern"),
    ("referral.json", {"items": [{"account": "x", "description": "d" * 2001}]}, "at most 2000 characters"),
    (
        "referral.json",
        {"items": [{"account": "x", "perceptual_hash": {"algorithm": "pdq", "value": "ab12"}}]},
        "a PDQ hash is 64 lower-case hex digits",
    ),
    (
        "referral.json",
        {"items": [{"account": "x", "perceptual_hash": {"algorithm": "md5", "value": "ab12"}}]},
        "Input should be 'pdq', 'photodna', 'tmk' or 'other'",
    ),
    ("referral.json", {"jti": "has space"}, "should match pattern"),
    ("referral.json", {"jti": "j" * 129}, "should match pattern"),
    ("referral.json", {"iss": ""}, "should match pattern"),
    ("referral.json", {"iat": -1}, "greater than or equal to 0"),
    ("referral.json", {"iat": 253_402_300_800}, "less than or equal to 253402300799"),
    ("referral.json", {"iat": "1741704000"}, "Input should be a valid integer"),
    ("referral.json", {"iat": 1741704000.5}, "Input should be a valid integer"),
    (
        "referral.json",
        {"type": "takedown"},
        "Input should be 'referral', 'removal_order' or 'preservation_request'",
    ),
    ("referral.json", {"category": "child_sexual_abuse"}, "Input should be 'terrorist_content'"),
    ("referral.json", {"tco_reasons": ["instructs", "instructs"]}, "entries must be unique"),
    ("referral.json", {"tco_reasons": ["glorifies"]}, "Input should be 'incites'"),
    ("referral.json", {"statement_of_reasons": "Too short"}, "at least 10 characters"),
    ("referral.json", {"statement_of_reasons": "x" * 10001}, "at most 10000 characters"),
    ("referral.json", {"territorial_scope": []}, "at least 1 item"),
    ("referral.json", {"territorial_scope": ["*", "DE"]}, "is not an ISO 3166-1 alpha-2 code"),
    ("referral.json", {"territorial_scope": ["de"]}, "'de' is not an ISO 3166-1 alpha-2 code"),
    ("referral.json", {"territorial_scope": ["DEU"]}, "is not an ISO 3166-1 alpha-2 code"),
    ("referral.json", {"territorial_scope": ["DE", "DE"]}, "entries must be unique"),
    ("referral.json", {"territorial_scope": ["*", "*"]}, "entries must be unique"),
    ("referral.json", {"deadline": "2025-03-14T14:40:00"}, "Input should have timezone info"),
    ("referral.json", {"deadline": 1741963200}, "must be an RFC 3339 string, not a number"),
    ("referral.json", {"language": "english"}, "should match pattern"),
    ("referral.json", {"language": "de_AT"}, "should match pattern"),
    ("referral.json", {"case_reference": "c" * 129}, "at most 128 characters"),
    ("referral.json", {"related_to": "not an id!"}, "should match pattern"),
    ("referral.json", {"legal_basis": {"instrument": "Regulation (EU) 2021/784"}}, "Field required"),
    ("referral.json", {"legal_basis": {"terms_of_service_clause": ""}}, "at least 1 character"),
    (
        "preservation_request.json",
        {"preservation": {"days": 0, "data_categories": ["content"]}},
        "greater than or equal to 1",
    ),
    (
        "preservation_request.json",
        {"preservation": {"days": 366, "data_categories": ["content"]}},
        "less than or equal to 365",
    ),
    (
        "preservation_request.json",
        {"preservation": {"days": "90", "data_categories": ["content"]}},
        "valid integer",
    ),
    ("preservation_request.json", {"preservation": {"data_categories": []}}, "at least 1 item"),
    ("preservation_request.json", {"preservation": {"days": 30}}, "Field required"),
    (
        "preservation_request.json",
        {"preservation": {"data_categories": ["traffic", "traffic"]}},
        "entries must be unique",
    ),
    (
        "preservation_request.json",
        {"preservation": {"data_categories": ["location"]}},
        "Input should be 'content'",
    ),
    (
        "removal_order.json",
        {"confidentiality": {"do_not_inform_until": "2025-04-21", "reason": "short"}},
        "at least 10 characters",
    ),
    (
        "removal_order.json",
        {"confidentiality": {"do_not_inform_until": 1745193600, "reason": "Ongoing investigation."}},
        "must be an RFC 3339 string, not a number",
    ),
]


@pytest.mark.parametrize(("name", "changes", "message"), FIELD_RULES)
def test_field_rules_are_refused_by_model_and_schema(
    name: str, changes: dict[str, Any], message: str
) -> None:
    assert_refused(ReferralDocument, patched(name, **changes), message)


def test_preservation_defaults_to_90_days() -> None:
    document = patched("preservation_request.json", preservation={"data_categories": ["subscriber"]})
    preservation = ReferralDocument.model_validate(document).preservation
    assert preservation is not None
    assert preservation.days == 90
    assert schema_errors(REFERRAL_SCHEMA, document) == []


def test_territorial_scope_takes_several_countries_or_everywhere() -> None:
    for scope in [["*"], ["DE"], ["DE", "AT", "FR"]]:
        document = patched("referral.json", territorial_scope=scope)
        assert ReferralDocument.model_validate(document).territorial_scope == scope
        assert schema_errors(REFERRAL_SCHEMA, document) == []


def test_one_thousand_items_are_accepted_and_one_more_is_refused() -> None:
    items = [{"url": f"https://example.com/post/{number}"} for number in range(1000)]
    document = patched("referral.json", items=items)
    assert len(ReferralDocument.model_validate(document).items) == 1000
    assert schema_errors(REFERRAL_SCHEMA, document) == []

    items.append({"url": "https://example.com/post/1000"})
    assert_refused(ReferralDocument, patched("referral.json", items=items), "at most 1000 items")


# --- unknown fields ---------------------------------------------------------------------------------------

UNKNOWN_FIELDS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("referral.json", lambda document: document.update(priority="high")),
    ("referral.json", lambda document: document["items"][0].update(thumbnail="https://example.com/t.jpg")),
    ("removal_order.json", lambda document: document["items"][2]["perceptual_hash"].update(quality=100)),
    ("removal_order.json", lambda document: document["legal_basis"].update(paragraph="1")),
    ("referral.json", lambda document: document["legal_basis"].update(version="2024-01")),
    ("preservation_request.json", lambda document: document["preservation"].update(hours=12)),
    ("preservation_request.json", lambda document: document["confidentiality"].update(until="2025-06-30")),
]


@pytest.mark.parametrize(("name", "add_unknown_field"), UNKNOWN_FIELDS)
def test_unknown_fields_are_refused_at_every_level(
    name: str, add_unknown_field: Callable[[dict[str, Any]], None]
) -> None:
    document = copy.deepcopy(example(name))
    add_unknown_field(document)
    assert_refused(ReferralDocument, document, "Extra inputs are not permitted")


@pytest.mark.parametrize(
    "add_unknown_field",
    [
        lambda document: document.update(signature="..."),
        lambda document: document["items"][0].update(note="done"),
    ],
)
def test_unknown_status_fields_are_refused(add_unknown_field: Callable[[dict[str, Any]], None]) -> None:
    document = copy.deepcopy(example("status-action_taken.json"))
    add_unknown_field(document)
    assert_refused(StatusDocument, document, "Extra inputs are not permitted")


def test_documents_are_immutable() -> None:
    document = ReferralDocument.model_validate(example("referral.json"))
    with pytest.raises(ValidationError, match="frozen"):
        document.jti = "other"  # type: ignore[misc]


# --- status documents -------------------------------------------------------------------------------------

ACTIONED = [{"index": 0, "outcome": "removed"}]

STATUS_RULES: list[tuple[str, dict[str, Any], str, bool]] = [
    ("status-acknowledged.json", {"status": "submitted"}, "'submitted' is recorded by the service", True),
    ("status-acknowledged.json", {"status": "delivered"}, "'delivered' is recorded by the service", True),
    ("status-acknowledged.json", {"status": "expired"}, "'expired' is recorded by the service", True),
    ("status-acknowledged.json", {"status": "closed"}, "Input should be", True),
    (
        "status-no_action.json",
        {"reason": DELETE, "reason_text": DELETE},
        "status 'no_action' needs a reason",
        True,
    ),
    (
        "status-no_action.json",
        {"reason": "other", "reason_text": DELETE},
        "reason 'other' needs reason_text",
        True,
    ),
    ("status-no_action.json", {"reason": "undesirable"}, "Input should be 'not_illegal'", True),
    (
        "status-partially_actioned.json",
        {"reason": DELETE, "reason_text": DELETE},
        "status 'partially_actioned' needs a reason",
        True,
    ),
    ("status-acknowledged.json", {"reason": "not_illegal"}, "status 'acknowledged' takes no reason", True),
    ("status-acknowledged.json", {"reason_text": "Because."}, "reason_text needs a reason", True),
    ("status-preserved.json", {"preserved_until": DELETE}, "status 'preserved' needs preserved_until", True),
    (
        "status-preservation_extended.json",
        {"preserved_until": None},
        "status 'preservation_extended' needs preserved_until",
        True,
    ),
    (
        "status-acknowledged.json",
        {"preserved_until": "2025-09-07T14:46:03Z"},
        "status 'acknowledged' takes no preserved_until",
        True,
    ),
    (
        "status-preserved.json",
        {"preserved_until": "2025-03-11T15:10:00Z"},
        "preserved_until must be after iat",
        False,
    ),
    (
        "status-preserved.json",
        {"preserved_until": "2025-09-07T14:46:03"},
        "Input should have timezone info",
        True,
    ),
    ("status-info_requested.json", {"message": DELETE}, "status 'info_requested' needs a message", True),
    ("status-info_provided.json", {"message": None}, "status 'info_provided' needs a message", True),
    ("status-contested.json", {"message": DELETE}, "status 'contested' needs a message", True),
    ("status-contested.json", {"message": "m" * 5001}, "at most 5000 characters", True),
    ("status-action_taken.json", {"items": DELETE}, "status 'action_taken' needs items", True),
    (
        "status-action_taken.json",
        {"items": [*ACTIONED, {"index": 1, "outcome": "no_action"}]},
        "status 'action_taken' needs items, each with an outcome that acts on it",
        True,
    ),
    (
        "status-partially_actioned.json",
        {"items": [{"index": 0, "outcome": "not_found"}]},
        "at least one with an outcome that acts on it",
        True,
    ),
    ("status-partially_actioned.json", {"items": []}, "at least one with an outcome that acts on it", True),
    (
        "status-no_action.json",
        {"items": [{"index": 0, "outcome": "removed"}]},
        "allows only the outcomes 'not_found' and 'no_action'",
        True,
    ),
    ("status-acknowledged.json", {"items": ACTIONED}, "status 'acknowledged' takes no item outcomes", True),
    ("status-upheld.json", {"items": ACTIONED}, "status 'upheld' takes no item outcomes", True),
    (
        "status-action_taken.json",
        {"items": [*ACTIONED, {"index": 0, "outcome": "account_suspended"}]},
        "items must name each index once",
        False,
    ),
    (
        "status-action_taken.json",
        {"items": [{"index": 0, "outcome": "access_disabled"}]},
        "outcome 'access_disabled' needs territories",
        True,
    ),
    (
        "status-action_taken.json",
        {"items": [{"index": 0, "outcome": "removed", "territories": ["DE"]}]},
        "outcome 'removed' applies everywhere and takes no territories",
        True,
    ),
    (
        "status-no_action.json",
        {"items": [{"index": 0, "outcome": "not_found", "territories": ["*"]}]},
        "outcome 'not_found' applies everywhere",
        True,
    ),
    (
        "status-action_taken.json",
        {"items": [{"index": 0, "outcome": "access_disabled", "territories": ["Germany"]}]},
        "is not an ISO 3166-1 alpha-2 code",
        True,
    ),
    ("status-action_taken.json", {"items": [{"index": 1000, "outcome": "removed"}]}, "less than 1000", True),
    (
        "status-action_taken.json",
        {"items": [{"index": -1, "outcome": "removed"}]},
        "greater than or equal to 0",
        True,
    ),
    ("status-action_taken.json", {"items": [{"index": "0", "outcome": "removed"}]}, "valid integer", True),
    ("status-action_taken.json", {"effective_at": 1741599531}, "must be an RFC 3339 string", True),
    ("status-acknowledged.json", {"referral_id": "a/b"}, "should match pattern", True),
]


@pytest.mark.parametrize(("name", "changes", "message", "by_schema"), STATUS_RULES)
def test_status_rules_are_refused_with_a_message(
    name: str, changes: dict[str, Any], message: str, by_schema: bool
) -> None:
    assert_refused(StatusDocument, patched(name, **changes), message, by_schema=by_schema)


@pytest.mark.parametrize(
    "items",
    [
        [{"index": 0, "outcome": "access_disabled", "territories": ["DE", "AT"]}],
        [{"index": 0, "outcome": "restricted", "territories": ["FR"]}],
        [{"index": 0, "outcome": "restricted"}],
        [{"index": 0, "outcome": "account_suspended"}, {"index": 1, "outcome": "removed"}],
    ],
)
def test_action_taken_outcomes_with_and_without_territories(items: list[dict[str, Any]]) -> None:
    document = patched("status-action_taken.json", items=items)
    assert len(StatusDocument.model_validate(document).items) == len(items)
    assert schema_errors(STATUS_SCHEMA, document) == []


def test_no_action_may_omit_item_outcomes_and_other_statuses_may_carry_a_note() -> None:
    no_action = patched("status-no_action.json", items=DELETE)
    assert StatusDocument.model_validate(no_action).items == []
    assert schema_errors(STATUS_SCHEMA, no_action) == []
    noted = patched("status-acknowledged.json", message="Escalated to our TCO contact point.")
    assert StatusDocument.model_validate(noted).message == "Escalated to our TCO contact point."
    assert schema_errors(STATUS_SCHEMA, noted) == []


def _removal_order_with_items(count: int) -> ReferralDocument:
    items = [{"url": f"https://video.example.com/v/{number}"} for number in range(count)]
    return ReferralDocument.model_validate(patched("removal_order.json", items=items))


def _status(status: str, outcomes: list[tuple[int, str]], **fields: Any) -> StatusDocument:
    items = [{"index": index, "outcome": outcome} for index, outcome in outcomes]
    return StatusDocument.model_validate(
        patched("status-acknowledged.json", status=status, items=items, **fields)
    )


def test_outcomes_must_name_items_of_the_referral() -> None:
    referral = _removal_order_with_items(2)
    status = _status("action_taken", [(0, "removed"), (1, "removed"), (2, "removed")])
    assert outcome_problems(len(referral.items), status) == [
        "items[2].index 2 is not an item of the referral (it has 2)"
    ]


def test_action_taken_covers_every_item_and_partially_actioned_does_not() -> None:
    referral = _removal_order_with_items(2)
    assert (
        outcome_problems(
            len(referral.items), _status("action_taken", [(0, "removed"), (1, "account_suspended")])
        )
        == []
    )
    assert outcome_problems(len(referral.items), _status("action_taken", [(1, "removed")])) == [
        "action_taken needs an actioned outcome for every item; use partially_actioned"
    ]
    partially = {"reason": "not_illegal"}
    assert (
        outcome_problems(len(referral.items), _status("partially_actioned", [(1, "removed")], **partially))
        == []
    )
    assert (
        outcome_problems(
            len(referral.items),
            _status("partially_actioned", [(0, "removed"), (1, "not_found")], **partially),
        )
        == []
    )
    assert outcome_problems(
        len(referral.items), _status("partially_actioned", [(0, "removed"), (1, "restricted")], **partially)
    ) == ["every item was actioned; use action_taken"]
    assert outcome_problems(len(referral.items), _status("no_action", [(0, "not_found")], **partially)) == []


# --- deadlines --------------------------------------------------------------------------------------------

RECEIVED = datetime(2025, 3, 10, 9, 13, 30, tzinfo=UTC)


def removal_order(**changes: Any) -> ReferralDocument:
    return ReferralDocument.model_validate(patched("removal_order.json", **changes))


def test_a_removal_order_is_due_one_hour_after_receipt() -> None:
    assert deadline_for(removal_order(), RECEIVED) == datetime(2025, 3, 10, 10, 13, 30, tzinfo=UTC)


def test_a_removal_order_deadline_earlier_than_one_hour_after_receipt_gives_way() -> None:
    document = removal_order(deadline="2025-03-10T09:30:00Z")
    assert deadline_for(document, RECEIVED) == RECEIVED + timedelta(hours=1)


def test_a_later_removal_order_deadline_is_kept() -> None:
    document = removal_order(deadline="2025-03-10T12:00:00+01:00")
    assert deadline_for(document, RECEIVED) == datetime(2025, 3, 10, 11, 0, tzinfo=UTC)


def test_the_deadline_is_in_utc_whatever_the_zone_of_receipt() -> None:
    received = RECEIVED.astimezone(timezone(timedelta(hours=2)))
    deadline = deadline_for(removal_order(), received)
    assert deadline == RECEIVED + timedelta(hours=1)
    assert deadline is not None
    assert deadline.utcoffset() == timedelta(0)


def test_other_requests_are_due_at_their_own_deadline_or_never() -> None:
    referral = ReferralDocument.model_validate(example("referral.json"))
    assert deadline_for(referral, RECEIVED) == datetime(2025, 3, 14, 14, 40, tzinfo=UTC)
    assert (
        deadline_for(ReferralDocument.model_validate(patched("referral.json", deadline=DELETE)), RECEIVED)
        is None
    )
    preservation = ReferralDocument.model_validate(example("preservation_request.json"))
    assert deadline_for(preservation, RECEIVED) is None


def test_a_naive_time_of_receipt_is_refused() -> None:
    with pytest.raises(ValueError, match="received_at must be an aware datetime"):
        deadline_for(removal_order(), RECEIVED.replace(tzinfo=None))
    preservation = ReferralDocument.model_validate(example("preservation_request.json"))
    with pytest.raises(ValueError, match="received_at must be an aware datetime"):
        preservation_expires_at(preservation, RECEIVED.replace(tzinfo=None))


def test_a_preservation_expires_days_after_receipt_or_when_the_provider_says() -> None:
    preservation = ReferralDocument.model_validate(example("preservation_request.json"))
    assert preservation_expires_at(preservation, RECEIVED) == RECEIVED + timedelta(days=180)
    extended = datetime(2025, 12, 6, 15, 46, 3, tzinfo=timezone(timedelta(hours=1)))
    assert preservation_expires_at(preservation, RECEIVED, extended) == datetime(
        2025, 12, 6, 14, 46, 3, tzinfo=UTC
    )
    assert preservation_expires_at(removal_order(), RECEIVED) is None
