"""Growth curves and harvest forecasts: when will a culture reach a given confluence?

Pure numerics (numpy and scipy), no CLI. :func:`fit_growth` takes one culture's
time points (hours) and confluence values (fractions) and returns a
:class:`GrowthFit`, whose :meth:`~GrowthFit.crossing` gives the predicted time
to a level with an 80 % interval.

The model, and why
------------------
Confluence ``y`` follows a Richards curve with capacity ``K`` (a monolayer's
plateau, at most 1) and shape ``theta``: ``d ln y / dt = r (1 - (y/K)**theta)``
(``theta = 1`` is the logistic). In the coordinate
``z = ln y - ln(K**theta - y**theta) / theta`` that curve is a straight line of
slope ``r``, the per-capita rate at low density (at low confluence ``z`` is just
``ln y - ln K``: exponential growth). Real cultures drift off any fixed curve
(medium, treatments, edge effects), so the slope is allowed to wander as a
random walk: ``z`` is an integrated random walk, and each scan is
``ln y = ln K + log(expit(theta z)) / theta`` plus noise, solved by an extended
Kalman filter (linear in ``z`` except for that observation, linearised at each
prediction: near the plateau a scan says little about ``z``, and a scan above
a capacity is a large residual against it). The noise of ``ln y`` has one
scale ``sigma`` per culture, integrated out (hence Student-t predictions)
under a weak prior worth one scan that says about 2 % (it keeps three-point
series from trusting a lucky small residual); the drift variance is
``drift * sigma**2`` per hour.

What the data cannot pin down is averaged over on a grid, weighted by the exact
marginal likelihood times a prior (Bayesian model averaging):

* capacity ``K``: Beta(15, 1.5) on (0.8 x highest observed level, 1]
  (median 0.93, 90 % in [0.77, 0.98]: a monolayer's plateau cannot exceed 1 and
  phase-contrast masks of a confluent layer usually read 0.8-0.98; noisy scans
  of a plateau may lie above it, hence the 0.8). Early in a culture the data
  say almost nothing about ``K``; a free fit then extrapolates wildly, this
  prior keeps the forecast sane and the data take over as the plateau shows;
* shape ``theta`` in {1, 2, 3}, equally likely: contact inhibition sets in
  later than the logistic says in many lines (per-capita rate nearly flat to
  half confluence);
* drift in {0} and 1e-8 .. 10**-2.5 per hour (log-uniform, half decades): 0
  is a fixed curve; at the top, with the usual 1-3 % noise, the rate may
  wander by a third of a typical rate within four days. Larger drifts fit
  every wiggle of the noise and forecast nothing.

The time to a level ``L`` is the first hour at which the latent ``z`` is
predicted above ``z(L)``: its distribution is the mixture over the grid of
``P(z(t_last + h) >= z(L))`` made monotone in ``h``. A capacity below ``L``
never reaches it. The point forecast is that distribution's median; the
interval its 10 % and 90 % quantiles. Forecasts beyond :data:`HORIZON_SPANS`
times the observed span are not made (null: the data cannot say).

>>> import numpy as np
>>> hours = np.arange(0.0, 49.0, 4.0)
>>> fit = fit_growth(hours, 0.9 / (1 + (0.9 / 0.05 - 1) * np.exp(-0.05 * hours)))
>>> round(fit.rate, 2)
0.05
>>> 20 < fit.crossing(0.6).hours < 30
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CAPACITY_PRIOR = (15.0, 1.5)
"""Beta(a, b) prior of the capacity (on the grid below)."""
SHAPES = (1.0, 2.0, 3.0)
"""Richards shapes averaged over (1 = logistic)."""
DRIFTS = (0.0, *(10.0 ** (e / 2) for e in range(-16, -4)))
"""Slope random-walk variances per hour, relative to the noise variance of ln y."""
CAPACITY_POINTS = 24
"""Capacity grid: midpoints of 24 equal bins of (CAPACITY_FROM x highest observed level, 1]."""
CAPACITY_FROM = 0.8
"""Noise can put scans of a plateau above it: the capacity grid starts below the highest value."""
INTERVAL = 0.8
"""Coverage of the reported interval."""
HORIZON_SPANS = 10.0
"""No forecast further ahead than this many times the observed time span."""
NOISE_PRIOR = (1.0, 0.02)
"""Scaled-inverse-chi-square prior of the noise variance of ln y: (degrees of freedom, scale)."""
MIN_POINTS = 3
"""A slope and its noise need three time points."""
FLOOR, CEILING = 1e-3, 0.999
"""Confluence is clipped to this range before taking logarithms (0 has no log; 1 leaves no room)."""
NOISY_SIGMA = 0.1
"""Scan-to-scan noise of ln(confluence) above which a series is flagged noisy (10 %)."""
RATE_SD = 0.01
"""A rate is reported when its posterior standard deviation is below half of it or below this (per hour)."""
CAPACITY_WIDTH = 0.1
"""The capacity is reported when its 80 % credible interval is narrower than this."""


@dataclass(frozen=True)
class Crossing:
    """When a level is reached, in hours after the last time point.

    ``hours`` is None when the forecast is that it will not be reached within
    the horizon; ``high`` (``low``) is None when the interval is unbounded above
    (the level is unlikely to be reached at all). ``probability`` is the chance
    of reaching it within the horizon.
    """

    level: float
    hours: float | None
    low: float | None
    high: float | None
    probability: float
    horizon: float


@dataclass
class _Grid:
    """Per grid cell (capacity, drift, shape): posterior weight and filtered state at the last point."""

    capacity: np.ndarray
    drift: np.ndarray
    shape: np.ndarray
    weight: np.ndarray
    z: np.ndarray
    slope: np.ndarray
    p00: np.ndarray
    p01: np.ndarray
    p11: np.ndarray
    scale: np.ndarray  # posterior sigma**2 of ln y
    dof: float


def _latent(y: np.ndarray | float, capacity: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """z = ln y - ln(K**theta - y**theta) / theta, for y below the capacity."""
    w = (y / capacity) ** shape
    return np.log(y) - np.log(capacity) - np.log1p(-w) / shape


def _inverse(z: np.ndarray, capacity: np.ndarray | float, shape: np.ndarray | float) -> np.ndarray:
    """y from z (the inverse of :func:`_latent`), without overflow."""
    from scipy.special import log_expit

    return capacity * np.exp(log_expit(shape * z) / shape)


def _kalman(hours: np.ndarray, log_y: np.ndarray, capacity: np.ndarray, shape: np.ndarray, drift: np.ndarray,
            history: bool = False) -> dict[str, Any]:
    """Extended Kalman filter of an integrated random walk (level z, slope r), on broadcast grids.

    The observation is ln y = ln K + log(expit(theta z)) / theta + noise (unit variance: all
    variances are relative to the noise's), linearised at the predicted z; near the plateau
    its slope 1 - (y/K)**theta vanishes and a scan says little about z, while a value above
    the capacity is simply a large residual. The slope's variance grows by ``drift`` per hour.
    A diffuse start: the first two points only set the state, the likelihood counts the rest.
    """
    from scipy.special import expit, log_expit

    log_cap = np.log(capacity)
    first = np.minimum(np.exp(log_y[0]), 0.999 * capacity)
    level = _latent(first, capacity, shape) * np.ones(np.broadcast(capacity, shape, drift).shape)
    slope = np.zeros_like(level)
    big = 1e8
    p00, p01, p11 = np.full_like(level, big), np.zeros_like(level), np.full_like(level, big)
    log_det = np.zeros_like(level)
    ssq = np.zeros_like(level)
    steps: list[tuple[np.ndarray, ...]] = []
    for i in range(log_y.size):
        if i:
            d = hours[i] - hours[i - 1]
            level = level + d * slope
            p00, p01, p11 = (p00 + 2 * d * p01 + d * d * p11 + drift * d**3 / 3,
                             p01 + d * p11 + drift * d * d / 2, p11 + drift * d)
        if history:
            steps.append((level, slope, p00, p01, p11))
        slope_h = 1.0 - expit(shape * level)  # d ln y / d z at the prediction
        innovation = log_y[i] - (log_cap + log_expit(shape * level) / shape)
        f = slope_h * slope_h * p00 + 1.0
        gain0, gain1 = p00 * slope_h / f, p01 * slope_h / f
        level = level + gain0 * innovation
        slope = slope + gain1 * innovation
        # P - P H' H P / f, written so that nothing large is subtracted from p00, p01
        p00, p01, p11 = p00 / f, p01 / f, p11 - slope_h * p01 * gain1
        if history:
            steps.append((level, slope, p00, p01, p11))
        if i >= 2:
            log_det += np.log(f)
            ssq += innovation**2 / f
    return {"level": level, "slope": slope, "p00": p00, "p01": p01, "p11": p11, "log_det": log_det,
            "ssq": ssq, "steps": steps}


def _bulk(weight: np.ndarray, mass: float = 1 - 1e-4) -> np.ndarray:
    """Boolean mask of the heaviest cells that together hold ``mass`` of the weight."""
    flat = weight.ravel()
    order = np.argsort(flat)[::-1]
    count = int(np.searchsorted(np.cumsum(flat[order]), mass * flat.sum())) + 1
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:count]] = True
    return keep.reshape(weight.shape)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values, axis=None)
    v, w = values.ravel()[order], weights.ravel()[order]
    cum = np.cumsum(w)
    return float(v[min(int(np.searchsorted(cum, q * cum[-1])), v.size - 1)])


class GrowthFit:
    """One culture's growth model: the posterior over the grid, and what follows from it."""

    def __init__(self, hours: np.ndarray, values: np.ndarray, grid: _Grid) -> None:
        self.hours = hours
        self.values = values
        self._grid = grid
        best = np.unravel_index(int(np.argmax(grid.weight)), grid.weight.shape)
        self._best = best

    # -- summaries ------------------------------------------------------------------------
    @property
    def span(self) -> float:
        return float(self.hours[-1] - self.hours[0])

    @property
    def horizon(self) -> float:
        """Hours after the last point beyond which no forecast is made."""
        return HORIZON_SPANS * max(self.span, 1.0)

    @property
    def shape(self) -> float:
        """The Richards shape with the most posterior weight."""
        g = self._grid
        totals = {s: float(g.weight[g.shape == s].sum()) for s in SHAPES}
        return max(totals, key=totals.__getitem__)

    @property
    def model(self) -> str:
        return "logistic" if self.shape == 1.0 else f"richards-{self.shape:g}"

    @property
    def rate(self) -> float:
        """Posterior mean per-capita growth rate at low density, per hour."""
        g = self._grid
        return float((g.weight * g.slope).sum())

    @property
    def rate_sd(self) -> float:
        """Posterior standard deviation of the rate (within and between grid cells)."""
        g = self._grid
        within = g.scale * g.p11 * (g.dof / (g.dof - 2) if g.dof > 2 else 3.0)
        mean = self.rate
        return float(math.sqrt(max((g.weight * (within + (g.slope - mean) ** 2)).sum(), 0.0)))

    @property
    def rate_known(self) -> bool:
        """Whether the data tell the rate (a series on its plateau does not): a posterior
        standard deviation below half the rate, or below 0.01 per hour."""
        sd = self.rate_sd
        return sd < max(0.5 * abs(self.rate), RATE_SD)

    @property
    def doubling_time(self) -> float | None:
        rate = self.rate
        # Below 1e-6 per hour (a doubling time over a century) the rate is printed as 0: none.
        return math.log(2) / rate if rate >= 1e-6 else None

    def capacity_interval(self) -> tuple[float, float, float]:
        """10 %, 50 % and 90 % posterior quantiles of the capacity."""
        g = self._grid
        tail = (1 - INTERVAL) / 2
        return tuple(_weighted_quantile(g.capacity, g.weight, q)  # type: ignore[return-value]
                     for q in (tail, 0.5, 1 - tail))

    @property
    def capacity(self) -> float | None:
        """The plateau, or None when the data leave it open (an 80 % interval wider than 0.1)."""
        low, mid, high = self.capacity_interval()
        return mid if high - low < CAPACITY_WIDTH else None

    @property
    def level_last(self) -> float:
        """Posterior mean of the fitted confluence at the last time point."""
        g = self._grid
        return float((g.weight * _inverse(g.z, g.capacity, g.shape)).sum())

    @property
    def noise(self) -> float:
        """Scan-to-scan noise of ln(confluence) (posterior mean sigma)."""
        g = self._grid
        return float((g.weight * np.sqrt(g.scale)).sum())

    @property
    def growing_probability(self) -> float:
        """Posterior probability that the culture is growing (rate > 0)."""
        from scipy.stats import t as student

        g = self._grid
        sd = np.sqrt(g.scale * g.p11)
        return float((g.weight * student.cdf(g.slope / sd, g.dof)).sum())

    def probability_at_or_above(self, level: float) -> float:
        """Posterior probability that the capacity is above ``level``."""
        g = self._grid
        return float(g.weight[g.capacity > level].sum())

    # -- the curve --------------------------------------------------------------------------
    def curve(self, hours: np.ndarray) -> np.ndarray:
        """Fitted confluence of the most probable grid cell: smoothed over the data, its
        expected path beyond the last point."""
        g, b = self._grid, self._best
        capacity, drift, shape = g.capacity[b], g.drift[b], g.shape[b]
        log_y = np.log(np.clip(self.values, FLOOR, CEILING))
        run = _kalman(self.hours, log_y, np.asarray(capacity), np.asarray(shape), np.asarray(drift), history=True)
        smoothed = _smooth(self.hours, run["steps"])
        hours = np.asarray(hours, dtype=float)
        out = np.interp(hours, self.hours, smoothed)
        after = hours > self.hours[-1]
        out[after] = g.z[b] + g.slope[b] * (hours[after] - self.hours[-1])
        return _inverse(out, capacity, shape)

    def residual_rmse(self) -> float:
        """Root mean square of observed minus fitted confluence (fraction)."""
        fitted = self.curve(self.hours)
        return float(np.sqrt(np.mean((self.values - fitted) ** 2)))

    # -- the forecast -----------------------------------------------------------------------
    def _passage(self, level: float) -> Any:
        """A function h -> P(z above z(level) at t_last + h) per retained cell, and the cells' weights."""
        from scipy.special import stdtr

        g = self._grid
        keep = _bulk(g.weight)  # cells holding all but 1e-4 of the posterior
        weight = g.weight[keep] / g.weight[keep].sum()
        capacity, shape = g.capacity[keep], g.shape[keep]
        possible = capacity > level
        cap = np.where(possible, capacity, 1.0)
        lvl = min(level, CEILING)
        w_level = np.minimum((lvl / cap) ** shape, 1 - 1e-12)
        z_level = (np.log(lvl) - np.log(cap) - np.log1p(-w_level) / shape)[:, None]
        z, slope, drift = g.z[keep][:, None], g.slope[keep][:, None], g.drift[keep][:, None]
        p00, p01, p11 = g.p00[keep][:, None], g.p01[keep][:, None], g.p11[keep][:, None]
        scale, possible = g.scale[keep][:, None], possible[:, None]

        def above(hours: np.ndarray) -> np.ndarray:
            h = np.asarray(hours, dtype=float)[None, :]
            var = p00 + 2 * h * p01 + h * h * p11 + drift * h**3 / 3
            sd = np.sqrt(scale * np.maximum(var, 1e-300))
            return np.where(possible, stdtr(g.dof, (z + slope * h - z_level) / sd), 0.0)

        return above, weight

    def crossing_cdf(self, level: float, hours: np.ndarray) -> np.ndarray:
        """P(the level is reached within h hours of the last point), for each h (ascending)."""
        above, weight = self._passage(level)
        # Reached once is reached: the running maximum per cell approximates first passage.
        return weight @ np.maximum.accumulate(above(hours), axis=-1)

    def crossing(self, level: float, interval: float = INTERVAL) -> Crossing:
        """When ``level`` is reached: median and ``interval`` bounds, hours after the last point."""
        horizon = self.horizon
        above, weight = self._passage(level)
        h = np.concatenate([[0.0], np.geomspace(horizon * 1e-4, horizon, 60)])
        per_cell = np.maximum.accumulate(above(h), axis=-1)
        cdf = weight @ per_cell
        tail = (1 - interval) / 2

        def quantile(q: float) -> float | None:
            hits = np.nonzero(cdf >= q)[0]
            if not hits.size:
                return None
            k = int(hits[0])
            if k == 0:
                return 0.0
            # refine inside the bracket on a fine linear grid, then interpolate
            fine = np.linspace(h[k - 1], h[k], 17)
            sub = weight @ np.maximum(np.maximum.accumulate(above(fine), axis=-1), per_cell[:, k - 1:k])
            j = max(int(np.nonzero(sub >= q)[0][0]) if (sub >= q).any() else 16, 1)
            lo_h, hi_h, lo_c, hi_c = fine[j - 1], fine[j], sub[j - 1], sub[j]
            frac = (q - lo_c) / (hi_c - lo_c) if hi_c > lo_c else 1.0
            return float(lo_h + min(max(frac, 0.0), 1.0) * (hi_h - lo_h))

        return Crossing(level=level, hours=quantile(0.5), low=quantile(tail), high=quantile(1 - tail),
                        probability=float(cdf[-1]), horizon=horizon)


def _smooth(hours: np.ndarray, steps: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    """Rauch-Tung-Striebel smoothed level from a filter's (predicted, filtered) history."""
    filtered = steps[1::2]
    predicted = steps[0::2]
    n = len(filtered)
    mean = np.array([float(filtered[-1][0]), float(filtered[-1][1])])
    cov = np.array([[float(filtered[-1][2]), float(filtered[-1][3])],
                    [float(filtered[-1][3]), float(filtered[-1][4])]])
    levels = np.empty(n)
    levels[-1] = mean[0]
    for i in range(n - 2, -1, -1):
        d = hours[i + 1] - hours[i]
        f_mean = np.array([float(filtered[i][0]), float(filtered[i][1])])
        f_cov = np.array([[float(filtered[i][2]), float(filtered[i][3])],
                          [float(filtered[i][3]), float(filtered[i][4])]])
        p_mean = np.array([float(predicted[i + 1][0]), float(predicted[i + 1][1])])
        p_cov = np.array([[float(predicted[i + 1][2]), float(predicted[i + 1][3])],
                          [float(predicted[i + 1][3]), float(predicted[i + 1][4])]])
        transition = np.array([[1.0, d], [0.0, 1.0]])
        gain = f_cov @ transition.T @ np.linalg.pinv(p_cov)
        mean = f_mean + gain @ (mean - p_mean)
        cov = f_cov + gain @ (cov - p_cov) @ gain.T
        levels[i] = mean[0]
    return levels


MAX_SPAN_H = 24 * 365.0
"""Longest time course fitted (a year): anything longer is a unit error, not a culture."""


def fit_growth(hours: np.ndarray, values: np.ndarray) -> GrowthFit:
    """Fit one culture: ``hours`` strictly increasing, ``values`` confluence fractions.

    At least :data:`MIN_POINTS` points. Values are clipped to [:data:`FLOOR`,
    :data:`CEILING`] (0 has no logarithm).
    """
    from scipy.stats import beta

    hours = np.asarray(hours, dtype=float)
    values = np.asarray(values, dtype=float)
    if hours.size < MIN_POINTS or hours.size != values.size:
        raise ValueError(f"need at least {MIN_POINTS} time points and one value per time point")
    if not np.all(np.diff(hours) > 0):
        raise ValueError("time points must be strictly increasing")
    span = float(hours[-1] - hours[0])
    if span > MAX_SPAN_H:
        raise ValueError(f"the time points span {span:.4g} hours, more than any culture grows "
                         f"({MAX_SPAN_H:g} h): are they seconds or minutes?")
    y = np.clip(values, FLOOR, CEILING)
    low = CAPACITY_FROM * float(y.max())
    capacities = low + (1.0 - low) * (np.arange(CAPACITY_POINTS) + 0.5) / CAPACITY_POINTS
    capacity, drift, shape = np.meshgrid(capacities, np.asarray(DRIFTS), np.asarray(SHAPES), indexing="ij")
    with np.errstate(all="ignore"):  # checked below: a failed fit is an error, never a forecast
        run = _kalman(hours, np.log(y), capacity, shape, drift)
        dof = hours.size - 2 + NOISE_PRIOR[0]
        ssq = run["ssq"] + NOISE_PRIOR[0] * NOISE_PRIOR[1] ** 2 + 1e-12  # + 1e-12: noise-free input, not log(0)
        log_like = -0.5 * run["log_det"] - 0.5 * dof * np.log(ssq)
        log_post = log_like + beta.logpdf(capacity, *CAPACITY_PRIOR)
        log_post = np.where(np.isfinite(log_post), log_post, -np.inf)
        if not np.isfinite(log_post).any():
            raise ValueError("the growth fit failed numerically for every curve (odd time points?)")
        weight = np.exp(log_post - log_post.max())
        weight /= weight.sum()
    usable = weight > 0
    for name in ("level", "slope", "p00", "p11"):
        if not np.isfinite(run[name][usable]).all():
            raise ValueError("the growth fit failed numerically (odd time points or values?)")
    grid = _Grid(capacity=capacity, drift=drift, shape=shape, weight=weight, z=run["level"],
                 slope=run["slope"], p00=run["p00"], p01=run["p01"], p11=run["p11"], scale=ssq / dof, dof=dof)
    return GrowthFit(hours, values, grid)
