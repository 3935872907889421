"""Harvest-time forecasts of ``monolayer growth`` against real confluence time courses.

Reads an Incucyte "Phase Object Confluence (Percent)" export (tab-separated:
header lines, then ``Date Time``, ``Elapsed`` hours and one column per well),
for instance the 60 MDA-MB-468 wells in ``../shared/data/growth-dev/``. For each
scenario (fit on the scans up to some hour, optionally only one scan a day as a
nightly scoring would have, then predict when each well crosses a confluence)
it compares the prediction with what the later 4-hourly scans show.

Only wells that are below the level at every scan up to the cutoff and cross it
at a later scan count; the true crossing is interpolated in log(confluence)
between the scans on either side. Per scenario it prints:

* wells evaluated;
* the baseline's median absolute error (hours): a straight line through
  log(confluence) of the last 16 h or of the last 24 h of scans (at least two:
  with one scan a day both windows hold the last two), whichever window does
  better in that scenario (named in ``win``);
* monolayer's median absolute error (hours), and the ratio to the baseline;
* the share of wells whose true crossing lies in monolayer's 80 % interval, and
  the interval's median width (``inf`` when more than half are unbounded above);
* ``none``: wells that did cross but for which monolayer made no forecast
  (predicted not to reach the level within its horizon): they count as infinite
  errors in the median.

Everything is measured in one run; nothing is asserted.

Usage::

    python benchmarks/growth_forecast.py [DATA] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / ".." / "shared" / "data" / "growth-dev" / "incucyte_MDA-MB-468_phase_confluence.txt"

# (cutoff hour, level, hours between the scans the fit sees)
SCENARIOS = [
    (48, 0.4, 4), (48, 0.5, 4), (72, 0.6, 4),  # the brief's three
    (48, 0.6, 4), (72, 0.8, 4), (96, 0.8, 4), (120, 0.7, 4), (144, 0.5, 4), (168, 0.6, 4),
    (48, 0.5, 24), (72, 0.6, 24), (96, 0.8, 24), (120, 0.7, 24),  # nightly scoring
]


def read_incucyte(path: Path) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """Elapsed hours, well names, confluence fractions (scans x wells) and the first scan's time."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Date Time"))
    wells = lines[start].split("\t")[2:]
    hours, rows, first = [], [], ""
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        if not first:
            first = datetime.strptime(cells[0], "%d/%m/%Y %H:%M:%S").isoformat()
        hours.append(float(cells[1]))
        rows.append([float(c) / 100 if c.strip() else math.nan for c in cells[2:2 + len(wells)]])
    return np.array(hours), wells, np.array(rows), first


def true_crossing(hours: np.ndarray, y: np.ndarray, cutoff: float, level: float) -> float | None:
    before = hours <= cutoff
    if np.nanmax(y[before]) >= level:
        return None
    after = np.nonzero((hours > cutoff) & (y >= level))[0]
    if not after.size:
        return None
    k = int(after[0])
    a, b = math.log(y[k - 1]), math.log(y[k])
    return float(hours[k - 1] + (math.log(level) - a) / (b - a) * (hours[k] - hours[k - 1]))


def baseline(hours: np.ndarray, y: np.ndarray, level: float, window: float) -> float:
    """Crossing time of a straight line through log(confluence) of the last ``window`` hours."""
    use = hours >= min(hours[-1] - window, hours[-2])
    slope, intercept = np.polyfit(hours[use], np.log(y[use]), 1)
    return (math.log(level) - intercept) / slope if slope > 0 else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT, help="Incucyte confluence export")
    parser.add_argument("--json", type=Path, help="also write every well's forecast here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from monolayer.growth import fit_growth

    hours, wells, table, first = read_incucyte(args.data)
    print(f"{args.data.name}: {len(wells)} wells, {len(hours)} scans, {hours[0]:g}-{hours[-1]:g} h "
          f"(first scan {first})")
    header = (f"{'scenario':<28} {'wells':>5} {'win':>4} {'baseline':>9} {'monolayer':>9} {'ratio':>6} "
              f"{'cover80':>7} {'width':>7} {'none':>4}")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    detail = []
    for cutoff, level, step in SCENARIOS:
        seen = (hours <= cutoff) & (np.round(hours) % step == 0)
        errors = {16: [], 24: []}
        ours, covered, widths, none = [], [], [], 0
        for j, well in enumerate(wells):
            y = table[:, j]
            truth = true_crossing(hours, y, cutoff, level)
            if truth is None:
                continue
            t, v = hours[seen], y[seen]
            for window in errors:
                errors[window].append(abs(baseline(t, v, level, window) - truth))
            c = fit_growth(t, v).crossing(level)
            est = math.inf if c.hours is None else t[-1] + c.hours
            low = math.inf if c.low is None else t[-1] + c.low
            high = math.inf if c.high is None else t[-1] + c.high
            none += c.hours is None
            ours.append(abs(est - truth))
            covered.append(low <= truth <= high)
            widths.append(high - low if math.isfinite(low) else math.inf)
            detail.append({"cutoff_h": cutoff, "level": level, "scan_every_h": step, "well": well,
                           "true_h": truth, "predicted_h": est, "low_h": low, "high_h": high})
        window = min(errors, key=lambda w: np.median(errors[w]))
        base, mine = float(np.median(errors[window])), float(np.median(ours))
        name = f"fit {cutoff}h{'' if step == 4 else ' nightly'}, cross {level:.1f}"
        print(f"{name:<28} {len(ours):>5} {window:>3}h {base:>9.1f} {mine:>9.1f} {mine / base:>6.2f} "
              f"{np.mean(covered):>7.2f} {np.median(widths):>7.1f} {none:>4}")
    print(f"({time.perf_counter() - started:.0f} s; errors and widths in hours; baseline = best of the "
          "16 h and 24 h log-linear windows)")
    if args.json:
        args.json.write_text(json.dumps(detail, indent=1, default=lambda x: None if x == math.inf else x))


if __name__ == "__main__":
    main()
