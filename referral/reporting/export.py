"""CSV rendering of a statistics table: one header, one record per line of the table, in the JSON's order."""

from __future__ import annotations

import csv
import io

from referral.reporting.service import StatsTable
from referral.reporting.tables import FIGURES, PublishedLine

SUPPRESSED = "suppressed"


def _cell(line: PublishedLine, figure: str) -> str:
    value = line.figures.get(figure)
    if figure in line.suppressed:
        return SUPPRESSED
    return "" if value is None else str(value)


def stats_csv(table: StatsTable) -> str:
    """The table as RFC 4180 CSV: ``scope``, ``period``, the group-by dimensions, then every figure.

    A suppressed figure reads ``suppressed``; a figure with nothing to compute it from (a median without any
    timed request) is empty.
    """
    dimensions = [dimension.value for dimension in table.query.group_by]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["scope", "period", *dimensions, *FIGURES])
    for line in [*table.rows, *table.periods, *table.groups, table.total]:
        group = list(line.group) or [""] * len(dimensions)
        period = "" if line.period is None else line.period.isoformat()
        writer.writerow([line.scope.value, period, *group, *(_cell(line, figure) for figure in FIGURES)])
    return buffer.getvalue()
