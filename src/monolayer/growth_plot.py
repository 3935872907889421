"""PNG of growth forecasts: one panel per culture, laid out as the plate when the cultures are wells.

matplotlib is imported only when a plot is asked for.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from monolayer.io.atomic import write_atomic

_WELL = re.compile(r"([A-Pa-p])(\d{1,2})")


def _layout(labels: list[str], plate: bool) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows, columns and each panel's (row, column): plate rows A-P and columns 1-24 as present,
    else a near-square grid in input order."""
    if plate:
        parsed = [_WELL.fullmatch(label) for label in labels]
        rows = sorted({m.group(1).upper() for m in parsed if m})
        cols = sorted({int(m.group(2)) for m in parsed if m})
        where = [(rows.index(m.group(1).upper()), cols.index(int(m.group(2)))) for m in parsed if m]
        if len(set(where)) == len(labels):  # one panel per well
            return len(rows), len(cols), where
    columns = max(1, math.ceil(math.sqrt(len(labels))))
    rows_n = max(1, math.ceil(len(labels) / columns))
    return rows_n, columns, [(i // columns, i % columns) for i in range(len(labels))]


def growth_plot(panels: list[dict[str, Any]], target: Path, *, harvest_at: float, xlabel: str,
                plate: bool) -> None:
    """Points, the fitted curve, the harvest level and the forecast with its 80 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, where = _layout([p["label"] for p in panels], plate)
    size = 1.7 if rows * cols > 12 else 2.6
    # Shared axes and tight_layout cost seconds on a 96-well plate: same limits set by hand instead.
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, cols * size), max(3.0, rows * size * 0.8)),
                             dpi=100, squeeze=False)
    used = set(where)
    for r in range(rows):
        for c in range(cols):
            if (r, c) not in used:
                axes[r][c].set_axis_off()
    small = rows * cols > 12
    left = min(float(p["x"][0]) for p in panels)
    ends = [float(p["x"][-1]) for p in panels] + [float(p["curve"][0][-1]) for p in panels if p["curve"] is not None]
    ends += [p[k] for p in panels for k in ("hours_to_harvest", "hours_to_harvest_high") if p[k] is not None]
    last = max(float(p["x"][-1]) for p in panels)
    # forecasts far beyond the data would squash every panel's points: show at most 3 spans
    right = min(max(ends), left + 3 * (last - left)) if last > left else max(max(ends), left + 1.0)
    right = left + (right - left) * 1.05
    for panel, (r, c) in zip(panels, where):
        ax = axes[r][c]
        ax.axhline(harvest_at, color="tab:red", lw=0.8, ls="--")
        low, high, eta = panel["hours_to_harvest_low"], panel["hours_to_harvest_high"], panel["hours_to_harvest"]
        if low is not None:
            ax.axvspan(low, right if high is None else max(high, low), color="tab:orange", alpha=0.25, lw=0)
        if eta is not None:
            ax.axvline(eta, color="tab:orange", lw=1.0)
        if panel["curve"] is not None:
            x, y = panel["curve"]
            ax.plot(x, y, color="tab:blue", lw=1.0)
        ax.plot(panel["x"], panel["y"], "o", ms=2.0 if small else 3.0, color="black")
        flags = [f for f in panel["flags"] if f != "reached"]
        title = panel["label"] + (f" ({', '.join(flags)})" if flags and not small else "")
        ax.set_title(title, fontsize=7 if small else 9)
        ax.set_xlim(left, right)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6 if small else 8, labelbottom=r == rows - 1 or (r + 1, c) not in used,
                       labelleft=c == 0 or (r, c - 1) not in used)
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel("confluence", fontsize=9)
    # Two short lines: on a montage of one or two panels a one-line legend is wider than the figure.
    fig.suptitle(f"dashed: harvest level {harvest_at:g}\nline: median forecast, band: 80 % interval",
                 fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.09, top=0.86, wspace=0.12, hspace=0.45)
    write_atomic(target, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
