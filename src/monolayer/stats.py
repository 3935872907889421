"""Summary statistics of numbers: n, mean, std, median, quartiles, IQR, min, max.

Conventions: ``std`` is the sample standard deviation (ddof = 1, None for n < 2);
quartiles use linear interpolation (numpy's default), so ``iqr = q3 - q1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from monolayer.errors import DataError

# Values whose largest magnitude lies outside [2**-400, 2**400] are summarised scaled by a
# power of two (exact), then scaled back: their sum (mean), squares (std) and differences
# (quantiles, iqr) would overflow or underflow float64 (1e308 + 1e308 is inf, (1e-200)**2 is 0).
# Ordinary values are summarised as they are, to the last bit.
COMFORT = (2.0**-400, 2.0**400)


def group_key(value: Any) -> tuple[str, Any]:
    """``value`` as a key that keeps JSON types apart: Python holds 1, 1.0 and true equal
    (one dict key), but they are three different groups.

    >>> len({group_key(1), group_key(1.0), group_key(True)})
    3
    """
    return (type(value).__name__, value)


def _scaled(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``a`` times 2**-exponent, and the exponent, with the peak magnitude near 1 when it
    lies outside :data:`COMFORT`; else ``a`` and 0."""
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak == 0 or COMFORT[0] <= peak <= COMFORT[1]:
        return a, 0
    exponent = math.frexp(peak)[1]
    with np.errstate(under="ignore"):  # values 2**1000 times below the peak count as 0 in it
        return np.ldexp(a, -exponent), exponent


def _unscaled(value: float, exponent: int, statistic: str, what: str) -> float:
    try:
        result = math.ldexp(float(value), exponent)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise DataError(f"{what}: the {statistic} is beyond the floating-point range (+-1.8e308)",
                        "rescale the values")
    return result


def _finite_array(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"{what}: not every value is a finite number")
    return a


def mean(values: Sequence[float], what: str = "values") -> float:
    """The mean of finite numbers, without overflow (1e308 and 1e308 average to 1e308);
    :class:`DataError` naming ``what`` for no values or a non-finite one.

    >>> mean([1e308, 1e308]), mean([1.0, 2.0])
    (1e+308, 1.5)
    """
    a = _finite_array(values, what)
    if not a.size:
        raise DataError(f"{what}: no values to average")
    scaled, exponent = _scaled(a)
    return _unscaled(scaled.mean(), exponent, "mean", what)


def summarize(values: Sequence[float], what: str = "values") -> dict[str, float | int | None]:
    """Summary of a sequence of finite numbers, computed without overflow.

    A statistic whose value lies beyond the float range (the std or iqr of -1e308 and
    1e308) is a :class:`DataError` naming ``what`` and the statistic, never a null.

    >>> s = summarize([1.0, 2.0, 3.0, 4.0])
    >>> s["n"], s["mean"], s["median"], s["iqr"]
    (4, 2.5, 2.5, 1.5)
    >>> s = summarize([1e308, 1e308, 1e308])
    >>> s["mean"], s["std"], s["iqr"]
    (1e+308, 0.0, 0.0)
    """
    a = _finite_array(values, what)
    n = int(a.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "q1": None,
                "q3": None, "iqr": None, "min": None, "max": None}
    scaled, exponent = _scaled(a)
    q1, median, q3 = (float(x) for x in np.percentile(scaled, [25, 50, 75]))
    computed = {"mean": scaled.mean(), "std": scaled.std(ddof=1) if n > 1 else None,
                "median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}
    return {
        "n": n,
        **{name: None if value is None else _unscaled(value, exponent, name, what)
           for name, value in computed.items()},
        "min": float(a.min()),
        "max": float(a.max()),
    }
