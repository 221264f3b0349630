"""``docs/api/openapi.yaml`` is a valid OpenAPI 3.1 document describing exactly the routes the app serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openapi_spec_validator import validate

from referral.apidocs import generate
from referral.app import create_app
from referral.config import Settings

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "docs" / "api" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def _document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    return document


def _served_operations() -> set[tuple[str, str]]:
    app = create_app(Settings(check_schema=False))
    operations = set()
    for route in app.router.routes():
        method = route.method.lower()
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if method in HTTP_METHODS and path:
            operations.add((method, path))
    return operations


def test_document_is_valid_openapi_3_1() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_served_route_is_documented_and_every_documented_route_is_served() -> None:
    documented = {
        (method, path)
        for path, item in _document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    served = _served_operations()
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_every_operation_has_an_id_and_documents_its_errors_as_problems() -> None:
    for path, item in _document()["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            assert operation.get("operationId"), f"{method} {path} has no operationId"
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and "$ref" not in response:
                    assert "application/problem+json" in response["content"], f"{method} {path} {status}"


def test_the_generated_schemas_are_current() -> None:
    """The payload and request-body schemas in the document are the pydantic models' own."""
    assert generate.main(["--check"]) == 0, "run python -m referral.apidocs.generate"
    components = _document()["components"]["schemas"]
    for model in generate.MODELS:
        assert model.__name__ in components
