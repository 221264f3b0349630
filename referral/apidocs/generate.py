"""Write the OpenAPI document's schemas of the signed payloads and JSON request bodies from the pydantic
models that validate them: ``python -m referral.apidocs.generate`` (``--check`` exits 1 when they differ).

The generated part of ``docs/api/openapi.yaml`` sits between two marker comments in ``components.schemas``;
everything else in the document is written by hand and checked against the app by the tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from referral.referrals.documents import ReferralDocument, StatusDocument
from referral.webhooks.service import WebhookCreate

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.yaml"
BEGIN = (
    "    # generated from the pydantic models by python -m referral.apidocs.generate: do not edit by hand\n"
)
END = "    # end of the generated schemas\n"
MODELS: tuple[type[BaseModel], ...] = (ReferralDocument, StatusDocument, WebhookCreate)


def generated_schemas() -> dict[str, Any]:
    """Every model and what it refers to, named as OpenAPI components."""
    _mapping, definitions = models_json_schema(
        [(model, "validation") for model in MODELS], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = definitions["$defs"]
    return schemas


def generated_text() -> str:
    """The YAML of the generated schemas, indented to sit under ``components.schemas``."""
    text = yaml.safe_dump(generated_schemas(), sort_keys=True, allow_unicode=True, width=110)
    return "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())


def with_generated(document: str) -> str:
    """The OpenAPI document with its generated part replaced."""
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    return document[:start] + generated_text() + document[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the generated schemas, or with ``--check`` report whether they are current."""
    parser = argparse.ArgumentParser(prog="python -m referral.apidocs.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the document differs")
    arguments = parser.parse_args(argv)
    current = OPENAPI.read_text(encoding="utf-8")
    wanted = with_generated(current)
    if current == wanted:
        return 0
    if arguments.check:
        sys.stderr.write(f"{OPENAPI} is out of date; run python -m referral.apidocs.generate\n")
        return 1
    OPENAPI.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
