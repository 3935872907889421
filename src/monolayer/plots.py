"""PNG plots of the experiment statistics (matplotlib, imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monolayer.io.atomic import write_atomic


def rounds_plot(records: list[dict[str, Any]], target: Path, *, group: str = "strategy",
                title: str | None = None) -> None:
    """Metric by round: a line per strategy (mean over repeats) with its IQR band;
    rounds where a strategy comparison is significant after correction are marked *."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = [r for r in records if r.get("record") == "summary"]
    tests = [r for r in records if r.get("record") == "test"]
    metric = summaries[0]["metric"] if summaries else "metric"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for g in sorted({r[group] for r in summaries}, key=str):
        rows = sorted((r for r in summaries if r[group] == g), key=lambda r: r["round"])
        xs = [r["round"] for r in rows]
        ax.plot(xs, [r["mean"] for r in rows], marker="o", label=f"{g} (mean)")
        ax.fill_between(xs, [r["q1"] for r in rows], [r["q3"] for r in rows], alpha=0.2,
                        label=f"{g} (IQR)")
    significant = sorted({r["round"] for r in tests if r.get("significant")})
    if significant and summaries:
        low, high = min(r["q1"] for r in summaries), max(r["q3"] for r in summaries)
        margin = 0.08 * (high - low or 1.0)
        ax.set_ylim(top=high + 2 * margin)
        for rnd in significant:
            ax.annotate("*", (rnd, high + margin), ha="center", va="center", fontsize=14)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    correction = tests[0]["correction"] if tests else "none"
    ax.set_title(title or f"{metric} by round (* = significant after {correction} correction)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(target, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def compare_plot(a: list[float], b: list[float], labels: tuple[str, str], metric: str, target: Path,
                 p: float) -> None:
    """Box plots of two evaluations side by side, with the Mann-Whitney p in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.boxplot([a, b], tick_labels=list(labels))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: {labels[0]} vs {labels[1]} (Mann-Whitney p = {p:.3g})")
    fig.tight_layout()
    write_atomic(target, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
