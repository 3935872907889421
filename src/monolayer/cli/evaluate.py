"""``monolayer evaluate``: per-image IoU, Dice and confluence error against ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.cli.common import (
    CHECKS, INPUT, OUTPUT, Tally, cli_errors, finish, say_error, stderr_console, write_records,
)
from monolayer.commands.evaluate import SUMMARY_FIELDS, evaluate as run_evaluate
from monolayer.commands.evaluate import load_truth, predictions_from, summary
from monolayer.errors import EXIT_ITEMS_FAILED, UsageError
from monolayer.io.atomic import write_text_atomic
from monolayer.schema import reserved_fields, text_problem


def parse_check(spec: str, default_metric: str) -> tuple[str, float]:
    """``METRIC=VALUE`` or ``VALUE`` (for the default metric)."""
    metric, sep, value = spec.rpartition("=")
    metric = metric if sep else default_metric
    if metric not in SUMMARY_FIELDS:
        raise UsageError(f"unknown metric {metric!r} in {spec!r}", f"use one of: {', '.join(SUMMARY_FIELDS)}")
    try:
        limit = float(value)
    except ValueError:
        raise UsageError(f"{spec!r}: {value!r} is not a number", "write METRIC=VALUE, e.g. iou=0.8") from None
    if not math.isfinite(limit):
        # A NaN limit makes every comparison false: the check could never fail.
        raise UsageError(f"{spec!r}: the limit must be a finite number", "write METRIC=VALUE, e.g. iou=0.8")
    return metric, limit


def parse_tag(spec: str) -> tuple[str, Any]:
    """``KEY=VALUE``; an integer or decimal VALUE becomes a number."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise UsageError(f"--tag {spec!r}: write KEY=VALUE")
    if key in reserved_fields("eval"):
        raise UsageError(f"--tag {key} would overwrite a field evaluate computes",
                         "choose another name, e.g. --tag run=... or --tag strategy=...")
    problem = text_problem(key) or text_problem(value)
    if problem:
        raise UsageError(f"--tag {spec!r}: {problem}")
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            break  # "nan" and "inf" stay text: JSON has no such numbers
        return key, number
    return key, value


def _table(stats: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="evaluation summary", title_justify="left")
    for column in ("metric", "n", "mean", "std", "median", "IQR", "min", "max"):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def fmt(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    for metric, s in stats.items():
        table.add_row(metric, str(s["n"]), fmt(s["mean"]), fmt(s["std"]), fmt(s["median"]),
                      fmt(s["iqr"]), fmt(s["min"]), fmt(s["max"]))
    stderr_console().print(table)


@cli_errors
def evaluate(
    predictions: Annotated[str, typer.Argument(
        help="segment JSON Lines (a file or - for stdin), or a folder of predicted masks.",
        show_default=False)],
    truth: Annotated[list[Path], typer.Option(
        "--truth", "-t", help="Ground truth: coco2mask JSON Lines, a COCO JSON file, or a folder of "
        "masks (matched by file-name stem). Repeat to combine sources.", rich_help_panel=INPUT,
        show_default=False)],
    summary_path: Annotated[Path | None, typer.Option(
        "--summary", help="Also write the summary (n, mean, std, median, IQR, min, max of each "
        "metric) as JSON to this file.", rich_help_panel=OUTPUT)] = None,
    fail_under: Annotated[list[str] | None, typer.Option(
        "--fail-under", help="Exit 1 if the mean of METRIC is under VALUE: METRIC=VALUE, or VALUE "
        "for iou. Repeatable.", rich_help_panel=CHECKS, show_default=False)] = None,
    fail_over: Annotated[list[str] | None, typer.Option(
        "--fail-over", help="Exit 1 if the mean of METRIC is over VALUE: METRIC=VALUE, or VALUE "
        "for abs_confluence_error. Repeatable.", rich_help_panel=CHECKS, show_default=False)] = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Truth images without a prediction are not an error.",
        rich_help_panel=CHECKS)] = False,
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", help="Add KEY=VALUE to every record (e.g. --tag strategy=entropy --tag round=3), "
        "for 'stats rounds'. Numbers stay numbers. Repeatable.", rich_help_panel=OUTPUT,
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Compare predicted masks with ground truth, image by image.

    Predictions are matched to truth by image identity (file checksum, then path,
    then a unique file-name stem), never by order. Prints one JSON record per image:
    image, iou, dice, confluence_pred, confluence_true, abs_confluence_error; then a
    summary table on stderr. An unmatched or failed image gives an error record and
    exit code 1.

    Example: monolayer evaluate pred.jsonl --truth truth.jsonl --fail-over 0.05 > eval.jsonl
    """
    checks = [(*parse_check(s, "iou"), "under") for s in fail_under or []]
    checks += [(*parse_check(s, "abs_confluence_error"), "over") for s in fail_over or []]
    extra = dict(parse_tag(t) for t in tags or [])
    index = load_truth(truth)
    tally = Tally()
    tagged = ({**r, **extra} for r in run_evaluate(predictions_from(predictions), index, allow_missing))
    stats = summary(write_records(tagged, tally))
    if summary_path is not None:
        write_text_atomic(summary_path, json.dumps(stats, indent=2) + "\n")
    if not quiet:
        _table(stats)
    failed_checks = []
    for metric, limit, kind in checks:
        mean = stats[metric]["mean"]
        if mean is None or (mean < limit if kind == "under" else mean > limit):
            shown = "undefined (no images)" if mean is None else f"{mean:.4f}"
            failed_checks.append(f"mean {metric} {shown} is {kind} the limit {limit}")
    for message in failed_checks:
        say_error(f"check failed: {message}")
    if failed_checks and not tally.failed:
        raise typer.Exit(EXIT_ITEMS_FAILED)
    finish(tally, "evaluate", quiet)
