"""``monolayer growth``: fit each culture's growth curve and forecast when it reaches a harvest confluence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monolayer.cli.common import CHECKS, INPUT, OUTPUT, cli_errors, say_error, say_warning
from monolayer.errors import EXIT_ALERT, NoInputError
from monolayer.records import RecordWriter, iter_many

FORECAST = "Forecast"


@cli_errors
def growth(
    records: Annotated[list[str], typer.Argument(
        help="JSON Lines files of confluence records (segment output tagged with a well and a time, or "
             "any records); - reads stdin.", show_default=False)],
    by: Annotated[list[str] | None, typer.Option(
        "--by", "-b", help="Field that tells cultures apart (FIELD:dir, FIELD:name or FIELD:stem use a "
        "path's folder, file name or stem). Repeatable; default: well.", rich_help_panel=INPUT,
        show_default=False)] = None,
    time_field: Annotated[str, typer.Option(
        "--time", help="Field holding the time: an ISO 8601 string, or a number of hours (e.g. elapsed_h).",
        rich_help_panel=INPUT)] = "time",
    value_field: Annotated[str, typer.Option(
        "--value", help="Field holding the confluence, a fraction from 0 to 1.", rich_help_panel=INPUT)] = "confluence",
    harvest_at: Annotated[float, typer.Option(
        "--harvest-at", help="Confluence at which to harvest or passage, a fraction (e.g. 0.7).",
        rich_help_panel=FORECAST, show_default=False)] = ...,  # type: ignore[assignment]
    alert_within: Annotated[float | None, typer.Option(
        "--alert-within", help="Exit 3, with one line per culture on stderr, when any culture is predicted to "
        "reach --harvest-at within this many hours (or has reached it).", rich_help_panel=CHECKS,
        show_default=False)] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG: one panel per culture (a plate layout when the groups are wells) with "
        "points, fitted curve, harvest level and the forecast's 80 % interval.", rich_help_panel=OUTPUT,
        show_default=False)] = None,
) -> None:
    """Forecast when each culture reaches a harvest confluence (growth curves from confluence time series).

    Records are grouped by --by (default: well); records of one group at one
    time (sites, tiles) are averaged. Each group's curve is a Bayesian average
    of logistic and Richards curves with a plateau of at most 1, whose rate
    may drift; one monolayer.growth/1 record per group gives the rate,
    doubling time, plateau, hours to the harvest level from the last time
    point with an 80 % interval, an eta, and flags (too_few_points, reached,
    not_growing, plateau, above_capacity, beyond_horizon, noisy). Error
    records are skipped and counted on stderr.

    Exit codes: 0 done, 3 an --alert-within alert (every record was written),
    1 a group could not be fitted (an error record for it; the others are
    written), 2 usage, 65 bad input (file:line), 66 no input.

    Example (a nightly cron job that mails when a well is due within a day):

    monolayer growth scores.jsonl --by well --time scanned_at --harvest-at 0.7 --alert-within 24 --plot plate.png > forecast.jsonl
    """
    from monolayer.commands.growth import alert_line, check_options, collect, forecast

    keys = list(by or ["well"])
    check_options(keys, harvest_at, alert_within)
    collected = collect(iter_many(records), keys, time_field, value_field)
    if not collected.series:
        raise NoInputError("no records to fit" + (
            f" ({collected.error_records} error records skipped)" if collected.error_records else ""),
            "give JSON Lines records with a time and a confluence")
    if collected.error_records:
        say_warning(f"skipped {collected.error_records} error record(s)")
    writer = RecordWriter()
    items = []
    failed = 0
    for item in forecast(collected, harvest_at):
        writer.write(item.record)
        if "error" in item.record:
            failed += 1
            say_error(item.record["error"])
        else:
            items.append(item)
    if plot is not None and items:
        from monolayer.commands.growth import plot_panels
        from monolayer.growth_plot import growth_plot

        panels, xlabel, layout = plot_panels(items, collected)
        growth_plot(panels, plot, harvest_at=harvest_at, xlabel=xlabel, plate=layout == "plate")
    if alert_within is not None:
        lines = [line for item in items if (line := alert_line(item, alert_within)) is not None]
        for line in lines:
            _alert(line)
        if lines:  # an alert wins over a failed group: the alert mail carries the error lines too
            raise typer.Exit(EXIT_ALERT)
    if failed:
        raise typer.Exit(1)


def _alert(line: str) -> None:
    from monolayer.cli.common import PROG, say

    say(f"{PROG}: alert: {line}")
