"""Two-sample comparisons for the paper's experiments: Mann-Whitney U, Cliff's delta,
and multiple-comparison corrections (Holm, Benjamini-Hochberg).

Mann-Whitney U is scipy's (two-sided; exact for small samples without ties,
else the normal approximation with tie and continuity correction, scipy's
``method="auto"``), and so is Benjamini-Hochberg (``false_discovery_control``).
Cliff's delta and Holm, which scipy does not have, are written out so they can
be checked by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(U of ``a``, two-sided p-value). With fewer than one value on a side: (nan, nan).

    >>> u, p = mann_whitney([1, 2, 3], [4, 5, 6])
    >>> u, round(p, 3)
    (0.0, 0.1)
    """
    from scipy.stats import mannwhitneyu

    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size == 0 or y.size == 0:
        return float("nan"), float("nan")
    if np.all(x == x[0]) and np.all(y == x[0]):  # all equal: no evidence of a difference
        return float(x.size * y.size / 2), 1.0
    result = mannwhitneyu(x, y, alternative="two-sided", method="auto")
    return float(result.statistic), float(result.pvalue)


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """Cliff's delta: P(a > b) - P(a < b) over all pairs, in [-1, 1] (0 = no effect).

    >>> cliffs_delta([3, 4], [1, 3])
    0.75
    """
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size == 0 or y.size == 0:
        return float("nan")
    # Compared, not subtracted: 1e308 - -1e308 overflows (with a warning) where > does not.
    above = np.count_nonzero(x[:, None] > y[None, :])
    below = np.count_nonzero(x[:, None] < y[None, :])
    return float((above - below) / (x.size * y.size))


def cliffs_magnitude(delta: float) -> str:
    """Romano et al. (2006) thresholds: negligible < 0.147 <= small < 0.33 <= medium < 0.474 <= large."""
    d = abs(delta)
    if np.isnan(d):
        return "undefined"
    return "negligible" if d < 0.147 else "small" if d < 0.33 else "medium" if d < 0.474 else "large"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in input order; nan stays nan.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(p.shape, np.nan)
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in input order; nan stays nan.

    >>> [round(p, 3) for p in benjamini_hochberg([0.01, 0.04, 0.03])]
    [0.03, 0.04, 0.04]
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, float)
    valid = ~np.isnan(p)
    adjusted = np.full(p.shape, np.nan)
    if valid.any():  # scipy refuses nan: the family is the p-values that exist
        adjusted[valid] = false_discovery_control(p[valid], method="bh")
    return adjusted.tolist()


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}
