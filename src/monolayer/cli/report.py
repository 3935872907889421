"""``monolayer report``: one self-contained HTML page for the morning check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monolayer.cli.common import INPUT, OUTPUT, cli_errors, say_warning
from monolayer.cli.stats import ExcludeFlag, OnlyFlag, flag_filter, say_filtered


@cli_errors
def report(
    files: Annotated[list[str] | None, typer.Argument(
        help="JSON Lines: segment records (ideally with --overlay), growth forecasts, or both; "
        "- (the default) reads stdin.", show_default=False, rich_help_panel=INPUT)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.",
                                      rich_help_panel=OUTPUT, show_default=False)] = Path("report.html"),
    title: Annotated[str, typer.Option("--title", help="Heading of the page.",
                                       rich_help_panel=OUTPUT)] = "Confluence report",
    harvest_at: Annotated[float | None, typer.Option(
        "--harvest-at", help="Also forecast, per well, when the segment records' confluence reaches "
        "this fraction (as 'monolayer growth' does, from their time or elapsed_h), with the growth "
        "curves as a plate montage.", rich_help_panel=OUTPUT, show_default=False)] = None,
    alert_within: Annotated[float | None, typer.Option(
        "--alert-within", help="Highlight forecasts that reach the harvest level within this many hours.",
        rich_help_panel=OUTPUT, show_default=False)] = None,
    exclude_flag: ExcludeFlag = None,
    only_flag: OnlyFlag = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Write ONE self-contained HTML page: failures first, growth forecasts, then a thumbnail
    of every image with its mask's outline, confluence and flags.

    Images with quality flags (segment's 'flags') get a warning mark next to their number
    and are listed under "Flagged images"; --exclude-flag/--only-flag leave images out
    (as in 'monolayer stats', and before --harvest-at forecasts from them).

    Pictures are inlined; the page has no script and references nothing outside itself,
    so it opens offline, as a mail attachment or from a shared drive. A thumbnail comes
    from the record's overlay (segment --overlay) or else its image and mask, each checked
    against the SHA-256 in the record. Prints nothing on stdout.

    Example: cat today.jsonl forecast.jsonl | monolayer report - -o /srv/www/plate7.html
    """
    import sys

    from monolayer.commands.report import gather, render
    from monolayer.io.atomic import ensure_folder, write_text_atomic
    from monolayer.records import iter_many

    chosen = flag_filter(exclude_flag, only_flag)
    found = gather(iter_many(files or ["-"], errors="yield"), chosen)
    if not (found.images or found.forecasts or found.failures):
        from monolayer.errors import NoInputError

        if found.filtered_out:
            raise NoInputError(f"nothing left to report: {chosen.describe()} left out all "
                               f"{found.filtered_out} segment record(s)",
                               "drop or change --exclude-flag/--only-flag to see them")
        raise NoInputError("no segment, growth or error records to report",
                           "give segment and/or growth JSON Lines")
    plot_png = None
    if harvest_at is not None:
        found.forecasts, plot_png = forecast_images(found, harvest_at, alert_within)
    ensure_folder(out.parent, file_name=out.name)
    write_text_atomic(out, render(found, title=title, plot_png=plot_png, alert_within=alert_within))
    if found.other:
        say_warning(f"skipped {found.other} record(s) of other kinds")
    if not quiet:
        say_filtered(chosen, found.filtered_out, found.without_flags)
    if not quiet:
        print(f"monolayer: report: {out}: {len(found.images)} image(s), {len(found.forecasts)} forecast(s), "
              f"{len(found.failures)} failure(s)", file=sys.stderr)
    if found.own_failures:
        # The page is written, but it could not show everything it was given.
        from monolayer.cli.common import say_error

        say_error(f"{found.own_failures} record(s) could not be shown or forecast; they are listed "
                  f"first in {out}")
        raise typer.Exit(1)


def forecast_images(found, harvest_at: float, alert_within: float | None):
    """Growth forecasts and their plot (PNG bytes) from the report's segment records."""
    import tempfile

    from monolayer.commands.growth import check_options, collect, forecast, plot_panels
    from monolayer.errors import UsageError
    from monolayer.growth_plot import growth_plot

    check_options(["well"], harvest_at, alert_within)
    records = [record for _, record in found.images]
    if not any("well" in r for r in records):
        raise UsageError("--harvest-at needs segment records with a well",
                         "segment with --name-pattern, or run 'monolayer growth' on your own records")
    time_field = "elapsed_h" if any(r.get("elapsed_h") is not None for r in records) else "time"
    usable = []
    for where, r in found.images:
        if r.get(time_field) is not None and "well" in r:
            usable.append((where, 1, r))
        else:  # never silently out of every growth curve: listed first, and exit 1
            missing = "well" if "well" not in r else time_field
            found.failures.append((str(r.get("image") or where), f"left out of the forecast: no {missing} "
                                   f"(the other records are forecast by {time_field})", 65))
            found.own_failures += 1
    collected = collect(usable, ["well"], time_field, "confluence")
    items = list(forecast(collected, harvest_at))
    panels, xlabel, layout = plot_panels(items, collected)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "growth.png"
        growth_plot(panels, target, harvest_at=harvest_at, xlabel=xlabel, plate=layout == "plate")
        png = target.read_bytes()
    return [item.record for item in items], png
