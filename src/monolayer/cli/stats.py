"""``monolayer stats``: n, mean, std, median, IQR, min, max of fields of any JSON Lines."""

from __future__ import annotations

import csv
import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

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


class _SummaryByDefault(TyperGroup):
    """`monolayer stats FILE ...` means `monolayer stats summary FILE ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["summary", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_SummaryByDefault, help="Statistics of JSON Lines: summaries (the default), "
                  "active-learning rounds, two-evaluation comparisons, movie positions.",
                  context_settings={"help_option_names": ["-h", "--help"]})


ExcludeFlag = Annotated[list[str] | None, typer.Option(
    "--exclude-flag", help="Leave out records whose image-quality flags include NAME (invalid_pixels, "
    "out_of_focus, saturated, uneven_illumination, no_texture, unlike_calibration), or any flag with 'any'. "
    "Repeatable; 'any' also matches flag names this version does not know. Records without flags "
    "(older or other records) are kept and counted on stderr. A group whose every record is left out "
    "is still listed, with n 0 (and a warning).",
    rich_help_panel=INPUT, show_default=False, metavar="NAME")]
OnlyFlag = Annotated[list[str] | None, typer.Option(
    "--only-flag", help="Keep only records flagged NAME (one of the --exclude-flag names), or with "
    "any flag with 'any'. Repeatable: any of them. Applied before --exclude-flag.",
    rich_help_panel=INPUT, show_default=False, metavar="NAME")]


def flag_filter(exclude: list[str] | None, only: list[str] | None):
    """The records filter of --exclude-flag/--only-flag (stats and report share it)."""
    from monolayer.commands.stats import FlagFilter

    return FlagFilter(exclude=tuple(exclude or ()), only=tuple(only or ()))


def say_filtered(kept_filter, left_out: int, without_flags: int) -> None:
    """One stderr line on what the flag filter did, so a filtered number is never mistaken."""
    if not kept_filter.active:
        return
    from monolayer.cli.common import PROG, say

    say(f"{PROG}: {kept_filter.describe()}: left out {left_out} record(s)")
    if without_flags:
        say_warning(f"{without_flags} record(s) carry no quality flags (made before quality checks, or "
                    "not segment records): " + ("left out by --only-flag" if kept_filter.only
                                                else "kept, unchecked"))


class Correction(str, enum.Enum):
    holm = "holm"
    bh = "bh"


@app.command("summary")
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
    exclude_flag: ExcludeFlag = None,
    only_flag: OnlyFlag = None,
) -> None:
    """Summarise numeric fields of JSON Lines records, grouped by keys (the default).

    `monolayer stats FILE ...` runs this. Prints one record per group and field with n, mean, std (sample), median,
    q1, q3, iqr, min, max. Records with an 'error' field are skipped and counted
    on stderr.

    Example: monolayer stats eval.jsonl --by model --by image:dir --field abs_confluence_error

    Example (flagged images left out): monolayer stats today.jsonl --field confluence --exclude-flag any
    """
    chosen = flag_filter(exclude_flag, only_flag)
    grouped = collect(iter_many(files or ["-"]), by or [], fields, chosen)
    skipped = [f"{n} {what}" for n, what in ((grouped.error_records, "error records skipped"),
                                             (grouped.filtered_out, f"left out by {chosen.describe()}"))
               if n]
    if grouped.records == 0:
        raise NoInputError("no records to summarise" + (f" ({', '.join(skipped)})" if skipped else ""))
    if grouped.error_records:
        say_warning(f"skipped {grouped.error_records} error record(s)")
    say_filtered(chosen, grouped.filtered_out, grouped.without_flags)
    emptied = grouped.emptied()
    if emptied:
        names = "; ".join(", ".join(f"{k} {v!r:.60}" for k, v in g.items()) for g in emptied[:5])
        say_warning(f"{chosen.describe()} left out every record of {len(emptied)} group(s), reported with n 0 "
                    f"and no statistics: {names}" + (" ..." if len(emptied) > 5 else ""))
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



@app.command("rounds")
@cli_errors
def rounds(
    files: Annotated[list[str], typer.Argument(help="evaluate JSON Lines tagged with strategy, repeat "
                                               "and round (evaluate --tag).", show_default=False)],
    metric: Annotated[str, typer.Option("--metric", help="Field to analyse.")] = "abs_confluence_error",
    group: Annotated[str, typer.Option("--group", help="Field naming the strategy.")] = "strategy",
    correction: Annotated[Correction, typer.Option("--correction", help="Multiple-comparison "
                                                   "correction over rounds: holm or bh.")] = Correction.holm,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level.")] = 0.05,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: metric by round, IQR bands, "
                                              "significant rounds marked.", rich_help_panel=OUTPUT)] = None,
) -> None:
    """Metric by round across repeats, and strategies compared per round.

    For each round and strategy: the per-repeat mean of the metric over the test
    images, summarised across repeats (n, mean, median, q1, q3, IQR). For each round
    and pair of strategies: Mann-Whitney U, p, p corrected over rounds, significance,
    Cliff's delta and its magnitude.

    Example: monolayer stats rounds eval_*.jsonl --metric abs_confluence_error --plot rounds.png
    """
    from monolayer.commands.experiments import rounds as analyse

    records = analyse(iter_many(files), metric, group=group, correction=correction.value, alpha=alpha)
    RecordWriter().write_all(records)
    if plot is not None:
        from monolayer.plots import rounds_plot

        rounds_plot(records, plot, group=group)


@app.command("compare")
@cli_errors
def compare(
    first: Annotated[Path, typer.Argument(help="One evaluation (e.g. trained on lazy labels).",
                                          show_default=False)],
    second: Annotated[Path, typer.Argument(help="The other (e.g. trained on exact labels).",
                                           show_default=False)],
    metric: Annotated[str, typer.Option("--metric", help="Field to compare.")] = "abs_confluence_error",
    labels: Annotated[tuple[str, str], typer.Option("--labels", help="Names of the two.")] = ("lazy", "exact"),
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG box plot.",
                                              rich_help_panel=OUTPUT)] = None,
) -> None:
    """Compare two evaluations, e.g. a model trained on lazy labels against one trained on exact ones.

    Each is summarised; then Mann-Whitney U, Cliff's delta, and the mean paired
    difference over the images both evaluated.

    Example: monolayer stats compare eval_lazy.jsonl eval_exact.jsonl --plot lazy_vs_exact.png
    """
    from monolayer.commands.experiments import compare as analyse

    a, b = list(iter_many([first])), list(iter_many([second]))
    records = analyse(a, b, metric, labels)  # checks every value the plot reads below
    RecordWriter().write_all(records)
    if plot is not None:
        from monolayer.plots import compare_plot

        values = [[float(r[metric]) for _, _, r in side if "error" not in r] for side in (a, b)]
        compare_plot(values[0], values[1], labels, metric, plot, records[-1]["p"])


@app.command("movie")
@cli_errors
def movie(
    manifests: Annotated[list[Path], typer.Argument(help="al-round manifests (one per repeat and "
                                                    "strategy) of time-ordered frames.", show_default=False)],
    correction: Annotated[Correction, typer.Option("--correction", help="holm or bh.")] = Correction.holm,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level.")] = 0.05,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of distance by round.",
                                              rich_help_panel=OUTPUT)] = None,
) -> None:
    """Distance in movie position between images picked in consecutive rounds, AL vs random.

    A frame's position is its rank among the manifest's images sorted by name (or
    its 'frame' field). Per round: mean and IQR over repeats per strategy, and
    Mann-Whitney U between strategies.

    Example: monolayer stats movie rep*_entropy.json rep*_random.json --plot movie.png
    """
    from monolayer.commands.experiments import movie as analyse

    records = analyse(manifests, correction=correction.value, alpha=alpha)
    RecordWriter().write_all(records)
    if plot is not None:
        from monolayer.plots import rounds_plot

        rounds_plot(records, plot, title="distance between consecutively picked frames")
