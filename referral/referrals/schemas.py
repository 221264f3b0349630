"""JSON Schemas of the signed documents, generated from the models; ``python -m referral.referrals.schemas``.

Without arguments the schemas are written to the repository's ``schemas/`` directory; ``--check`` writes
nothing and exits 1 when a checked-in file differs from what the models generate, so CI catches a model
changed without its schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from referral.referrals.documents import ReferralDocument, StatusDocument

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE = "https://referral.dev/schemas/"
SCHEMA_DIRECTORY = Path(__file__).resolve().parents[2] / "schemas"

_MODELS: dict[str, type[BaseModel]] = {
    "referral.schema.json": ReferralDocument,
    "status.schema.json": StatusDocument,
}


def schema_documents() -> dict[str, dict[str, Any]]:
    """Each schema file's name and its JSON Schema (draft 2020-12) document."""
    return {
        name: {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_BASE + name, **model.model_json_schema()}
        for name, model in _MODELS.items()
    }


def schema_text(document: dict[str, Any]) -> str:
    """The checked-in text of a schema: stable, readable, ending in a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schemas, or with ``--check`` report the ones that differ; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m referral.referrals.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument(
        "--directory",
        type=Path,
        default=SCHEMA_DIRECTORY,
        help="where the schemas live (default: %(default)s)",
    )
    arguments = parser.parse_args(argv)
    directory: Path = arguments.directory
    stale = []
    for name, document in schema_documents().items():
        path = directory / name
        text = schema_text(document)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not arguments.check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if arguments.check and stale:
        sys.stderr.write(
            f"out of date in {directory}: {', '.join(stale)}; run python -m referral.referrals.schemas\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
