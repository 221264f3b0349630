"""PostgreSQL: many rows in one statement, each column as one array parameter (``unnest``).

An ``executemany`` sends one parameter set per row and has every value of every row go through the
driver's and SQLAlchemy's per-parameter machinery; with arrays the rows of a whole group travel as a few
parameters, and several tables can be written by one statement (data-modifying CTEs). The SQL is built once
per table from its columns; only numbered placeholders are formatted in, every value is a bound parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, String, Table
from sqlalchemy.dialects import postgresql

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _array_type(column: Any) -> str:
    """The array type a column's values are cast to: a string column's without its length, since an explicit
    ``CAST(... AS VARCHAR(n)[])`` cuts a longer value short without a word, while the INSERT's assignment
    to the ``VARCHAR(n)`` column refuses it (a value is stored whole or not at all)."""
    column_type = column.type
    if isinstance(column_type, String) and column_type.length is not None:
        column_type = String()
    return f"{column_type.compile(dialect=_DIALECT)}[]"


def unnest_insert(table: Table, *, prefix: str, where: str | None = None) -> str:
    """``INSERT INTO table (...) SELECT * FROM unnest(...)`` over every column of ``table``, one array
    parameter per column named ``prefix + column`` (see ``unnest_parameters``). ``where`` (SQL text, no
    values) keeps only some of the rows: it sees each as ``row`` with the table's column names."""
    names = ", ".join(column.name for column in table.columns)
    arrays = ", ".join(f"CAST(:{prefix}{column.name} AS {_array_type(column)})" for column in table.columns)
    rows = f"unnest({arrays})" if where is None else f"unnest({arrays}) AS row({names}) WHERE {where}"
    return f"INSERT INTO {table.name} ({names}) SELECT * FROM {rows}"  # noqa: S608 - names only


def unnest_parameters(
    table: Table, rows: Iterable[Mapping[str, Any]], *, prefix: str
) -> dict[str, list[Any]]:
    """The array parameters of ``unnest_insert`` for ``rows`` (JSON columns as JSON text)."""
    rows = list(rows)
    parameters: dict[str, list[Any]] = {}
    for column in table.columns:
        values: Sequence[Any] = [row[column.name] for row in rows]
        if isinstance(column.type, JSON):
            values = [None if value is None else json.dumps(value) for value in values]
        parameters[prefix + column.name] = list(values)
    return parameters
