"""Summary statistics of numbers: n, mean, std, median, quartiles, IQR, min, max.

Conventions: ``std`` is the sample standard deviation (ddof = 1, None for n < 2);
quartiles use linear interpolation (numpy's default), so ``iqr = q3 - q1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of a sequence of finite numbers.

    >>> s = summarize([1.0, 2.0, 3.0, 4.0])
    >>> s["n"], s["mean"], s["median"], s["iqr"]
    (4, 2.5, 2.5, 1.5)
    """
    a = np.asarray(values, dtype=np.float64)
    n = int(a.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "q1": None,
                "q3": None, "iqr": None, "min": None, "max": None}
    q1, median, q3 = (float(x) for x in np.percentile(a, [25, 50, 75]))
    return {
        "n": n,
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if n > 1 else None,
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": float(a.min()),
        "max": float(a.max()),
    }
