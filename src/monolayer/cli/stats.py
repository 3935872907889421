"""``monolayer stats``: n, mean, std, median, IQR, min, max of fields of any JSON Lines."""

from __future__ import annotations

import csv
import enum
import sys
from typing import Annotated, Any

import typer

from monolayer.cli.common import INPUT, OUTPUT, cli_errors, say_warning, stderr_console
from monolayer.commands.stats import collect
from monolayer.errors import NoInputError
from monolayer.records import RecordWriter, iter_many

STAT_COLUMNS = ("n", "mean", "std", "median", "q1", "q3", "iqr", "min", "max")


class Format(str, enum.Enum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


@cli_errors
def stats(
    files: Annotated[list[str] | None, typer.Argument(
        help="JSON Lines files; - (the default) reads stdin.", show_default=False)] = None,
    by: Annotated[list[str] | None, typer.Option(
        "--by", "-b", help="Group by this field; FIELD:dir, FIELD:name or FIELD:stem group by a "
        "path's folder, file name or stem (e.g. image:dir). Repeatable.", rich_help_panel=INPUT,
        show_default=False)] = None,
    fields: Annotated[list[str] | None, typer.Option(
        "--field", "-f", help="Numeric field to summarise. Repeatable; default: every numeric field.",
        rich_help_panel=INPUT, show_default=False)] = None,
    output_format: Annotated[Format, typer.Option(
        "--format", help="jsonl or csv on stdout, or a table on stderr.",
        rich_help_panel=OUTPUT)] = Format.jsonl,
) -> None:
    """Summarise numeric fields of JSON Lines records, grouped by keys.

    Prints one record per group and field with n, mean, std (sample), median,
    q1, q3, iqr, min, max. Records with an 'error' field are skipped and counted
    on stderr.

    Example: monolayer stats eval.jsonl --by model --by image:dir --field abs_confluence_error
    """
    grouped = collect(iter_many(files or ["-"]), by or [], fields)
    if grouped.records == 0:
        raise NoInputError("no records to summarise" + (
            f" ({grouped.error_records} error records skipped)" if grouped.error_records else ""))
    if grouped.error_records:
        say_warning(f"skipped {grouped.error_records} error record(s)")
    results = list(grouped.results())
    keys = list(by or [])
    if output_format is Format.jsonl:
        writer = RecordWriter()
        for record in results:
            writer.write(record)
    elif output_format is Format.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow([*keys, "field", *STAT_COLUMNS])
        for record in results:
            out.writerow([_fmt_csv(record.get(k)) for k in (*keys, "field", *STAT_COLUMNS)])
    else:
        from rich.table import Table

        table = Table()
        for column in (*keys, "field", *STAT_COLUMNS):
            table.add_column(column, justify="right" if column in STAT_COLUMNS else "left")
        for record in results:
            table.add_row(*[_fmt(record.get(k)) for k in (*keys, "field", *STAT_COLUMNS)])
        stderr_console().print(table)


def _fmt_csv(value: Any) -> str:
    return "" if value is None else str(value)
