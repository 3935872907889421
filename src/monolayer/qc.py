"""Image-quality and domain checks: a few named numbers per image, and the flags they raise.

A fixed method (and a calibrated one) is only as good as the images it was made on
look like the image at hand. :func:`measure` takes a few cheap numbers from the
image as read; :func:`flags` turns them into warnings:

``out_of_focus``
    the sharpest edges are spread over several pixels (``sharpness`` low);
``saturated``
    many pixels sit at the image's extreme values (``clipped_high``/``clipped_low``);
``uneven_illumination``
    a smooth background slope or vignetting comparable to the image's contrast
    (``illumination``);
``no_texture``
    nothing above the pixel noise at the scale of cells (``texture``): an empty
    well, a lens cap, a bright-field image with no phase contrast, pure noise;
``unlike_calibration``
    one of the domain statistics (:data:`DOMAIN`) lies outside the range of the
    images the parameters were calibrated on (:func:`reference_from`), or, for the
    classical default parameters, of the development images (:data:`DEV_REFERENCE`).

The thresholds and :data:`DEV_REFERENCE` come from ``benchmarks/qc_dev.py``, run on
the development images (LIVECell phase contrast, Usiigaci fibroblasts) and on
blurred, over-exposed, ramped, empty and pure-noise versions of them; it prints the
table behind every constant here.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> empty = (120 + rng.normal(0, 2, (256, 256))).round().astype(np.uint8)
>>> flags(measure(empty, empty.dtype), None)
['no_texture']
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

QC_VERSION = 1
"""Bumped whenever a measure changes meaning: a reference made by another version is
not comparable (a params file should store it next to its ``qc_reference``)."""

FLAGS = ("out_of_focus", "saturated", "uneven_illumination", "no_texture", "unlike_calibration")
"""Every flag, in the order :func:`flags` lists them."""

DOMAIN = ("noise", "contrast", "skew", "scale", "sharpness")
"""The measures that describe the imaging (modality, microscope, camera, magnification)
rather than the culture: the ones ``unlike_calibration`` compares with a reference.
Confluence moves them little (``benchmarks/qc_dev.py`` checks: the same well at 21 %
and 95 % confluence, and leave-one-out within each source)."""

# Thresholds (benchmarks/qc_dev.py prints the values on the development images and
# their degraded versions; the margins below are what it shows).
SHARPNESS_MIN = 0.4
"""out_of_focus below this. Development images: 0.56 and up; blurred by a Gaussian of
sigma 3 px (with the noise put back) or 4 px: 0.35 and below."""
CLIPPED_MAX = 0.02
"""saturated above this fraction of pixels at either extreme. Development images: up
to 0.009 (Usiigaci's halos clip at 65535); over-exposed so the 90th percentile hits
the top: 0.10."""
ILLUMINATION_MAX = 0.25
"""uneven_illumination above this. Development images: up to 0.08 (0.17 once blurred);
a +-30 % ramp across the field: 0.38 and up."""
TEXTURE_MIN = 1.0
"""no_texture below this. Development images: 2.7 and up; an empty field (flat plus
the image's own noise) or pure noise: about 0.2."""

FOCUS_TEXTURE_MIN = 0.5
"""out_of_focus is judged only above this texture: an empty field or pure noise (about
0.2) has no edges to be sharp, while faint cells blurred (0.88 and up) still do."""

REFERENCE_MARGIN = math.log(1.5)
"""A reference range is widened on each side, in log units, by this, plus a quarter of
its own span, plus this again over the number of images: what one to five calibration
images need to cover other days, densities and cell lines of the same microscope.
``benchmarks/qc_dev.py`` draws references from k = 1..5 development images: at most 5 %
of the other images of the same source (LIVECell mixes six cell lines) are flagged, and
99-100 % of the other source's."""

#: Range of :data:`DOMAIN` over the 28 development images (12 LIVECell, 16 Usiigaci),
#: widened as :func:`reference_from` does: what the classical default parameters were
#: tuned on. Printed by ``benchmarks/qc_dev.py``.
DEV_REFERENCE: dict[str, list[float]] = {
    "noise": [0.001732, 0.04317], "contrast": [0.1785, 4.108], "skew": [0.3836, 3.775],
    "scale": [0.779, 17.67], "sharpness": [0.279, 1.806],
}

_PERCENTILE = 99.5


def _noise_sigma(a: np.ndarray, block: int = 8, percentile: float = 2.0) -> float:
    """Pixel-noise sigma: RMS of diagonal Haar details per tile, a low percentile of the
    tiles, so cells (even a confluent layer) hardly inflate it (as ``phase.noise_sigma``)."""
    d = (a[:-1:2, :-1:2] - a[1::2, :-1:2] - a[:-1:2, 1::2] + a[1::2, 1::2]) * np.float32(0.5)
    h, w = (d.shape[0] // block) * block, (d.shape[1] // block) * block
    if h == 0 or w == 0:
        return float(np.sqrt(np.mean(d * d))) if d.size else 0.0
    d = d[:h, :w]
    tiles = np.einsum("ijkl,ijkl->ik", *(d.reshape(h // block, block, w // block, block),) * 2)
    return float(np.sqrt(np.percentile(tiles, percentile) / (block * block)))


def _halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 block means (one level of the pyramid)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * np.float32(0.25)


def _curvature(a: np.ndarray) -> tuple[float, float]:
    """Mean square and high percentile of the horizontal and vertical second differences,
    over about 64 rows and 64 columns (enough samples, a fraction of the time)."""
    rows = a[:: max(1, a.shape[0] // 64), :]
    cols = a[:, :: max(1, a.shape[1] // 64)]
    r = np.abs(rows[:, 2:] + rows[:, :-2] - 2 * rows[:, 1:-1]).ravel()
    c = np.abs(cols[2:, :] + cols[:-2, :] - 2 * cols[1:-1, :]).ravel()
    both = np.concatenate([r, c])
    return float(np.dot(both, both) / both.size), float(np.percentile(both, _PERCENTILE))


def _background_range(a: np.ndarray) -> float:
    """Peak-to-peak of a quadratic surface fitted to coarse block means: the slope and
    vignetting of the illumination (cells average out at this scale)."""
    if a.size < 6:
        return 0.0
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]].astype(np.float64)
    yy = (yy + 0.5) / a.shape[0] - 0.5
    xx = (xx + 0.5) / a.shape[1] - 0.5
    terms = [np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy]
    design = np.stack(terms, axis=-1).reshape(-1, len(terms))
    coef, *_ = np.linalg.lstsq(design, a.astype(np.float64).ravel(), rcond=None)
    surface = design @ coef
    return float(surface.max() - surface.min())


def _round(value: float) -> float:
    return float(f"{value:.4g}") if math.isfinite(value) else 0.0


def measure(gray: np.ndarray, dtype: np.dtype) -> dict[str, float]:
    """Named image-quality numbers of one image as read (2-D grayscale, values as stored;
    `dtype` the stored dtype, for the clipping extremes and the quantisation floor).

    ``clipped_low``/``clipped_high``: fraction of pixels at the image's minimum/maximum
    (a flat image counts only at its dtype's ends); ``noise``: pixel-noise sigma over the
    robust intensity range (0.5th..99.5th percentile); ``contrast``: that range over the
    median intensity; ``skew``: (p99.5 - median) / (median - p0.5), above 1 when bright
    halos outweigh dark cells; ``texture``: structure at 4-16 px above the noise, in noise
    sigmas (4-16 px: a blurred image keeps its cells there); ``sharpness``: the strongest 2-px curvature over the strongest at any scale
    (1 to 16 px), about 1 for sharp edges; ``scale``: the energy-weighted scale of the
    structure in px; ``illumination``: the background surface's range over the robust
    range. Cheap: a few ms for 704 x 520 (``benchmarks/qc_dev.py`` times it).
    """
    x = np.asarray(gray, dtype=np.float32)
    if x.ndim != 2 or x.size == 0:
        raise ValueError("qc.measure expects a non-empty 2-D image")
    if not np.isfinite(x).all():
        finite = x[np.isfinite(x)]
        x = np.where(np.isfinite(x), x, np.median(finite) if finite.size else 0.0).astype(np.float32)
    dtype = np.dtype(dtype)
    low, high = float(x.min()), float(x.max())
    if high > low:
        clipped_low = np.count_nonzero(x == low) / x.size
        clipped_high = np.count_nonzero(x == high) / x.size
    else:  # flat: clipped only if it sits at the end of what the file can hold
        ends = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" else (None, None)
        clipped_low, clipped_high = float(low == ends[0]), float(high == ends[1])

    # Squares of values near float32's top overflow: measure a scaled copy (every number
    # below is a ratio, so the scale cancels; only the rounding floor is in stored units).
    unit = max(abs(low), abs(high))
    unit = unit if unit > 1e15 else 1.0
    if unit != 1.0:
        x = (x.astype(np.float64) / unit).astype(np.float32)
    sigma = _noise_sigma(x) if min(x.shape) >= 2 else 0.0
    if dtype.kind in "iub":  # integers carry at least their rounding error (1/sqrt(12) step)
        sigma = max(sigma, math.sqrt(1 / 12) / unit)
    half = _halve(x) if min(x.shape) >= 2 else x
    energy, peak, a = [], [], x
    for level in range(5):
        if min(a.shape) < 3:
            break
        mean_square, p = _curvature(a)
        noise = 6.0 * (sigma / 2**level) ** 2  # a [1, -2, 1] difference of white noise: 6 sigma^2
        energy.append(max(mean_square - noise, 0.0) / 6.0)
        peak.append(math.sqrt(max(p * p - 2.81**2 * noise, 0.0)))  # 2.81: the noise's own p99.5
        a = half if level == 0 else _halve(a)
    while min(a.shape) >= 16:
        a = _halve(a)
    illumination = _background_range(a)

    lo, median, hi = (float(v) for v in np.percentile(x[::2, ::2], [0.5, 50, _PERCENTILE]))
    spread = hi - lo if hi > lo else max(high - low, 1e-12)
    e = np.asarray(energy + [0.0] * (5 - len(energy)))
    p = np.asarray(peak + [0.0] * (5 - len(peak)))
    scales = 2.0 ** np.arange(5)
    return {
        "clipped_low": _round(clipped_low),
        "clipped_high": _round(clipped_high),
        "noise": _round(sigma / spread),
        "contrast": _round(spread / max(abs(median), 1e-12)),
        "skew": _round((hi - median) / max(median - lo, 1e-12 * spread)),
        "texture": _round(math.sqrt(e[2] + e[3] + e[4]) / max(sigma, 1e-12)),
        "sharpness": _round(p[1] / p.max() if p.max() > 0 else 0.0),
        "scale": _round(float((e * scales).sum() / e.sum()) if e.sum() > 0 else 0.0),
        "illumination": _round(illumination / spread),
    }


def reference_from(measures: list[dict[str, float]]) -> dict[str, list[float]]:
    """The range of the domain statistics over calibration images ({name: [low, high]}, widened
    by a margin suited to a few images).

    Each of :data:`DOMAIN` (all positive) gets ``[min / m, max * m]`` with
    ``log m = REFERENCE_MARGIN * (1 + 1 / n) + span / 4`` (``span`` the log of max/min,
    ``n`` the number of images).

    >>> reference_from([{"noise": 0.01, "contrast": 0.5, "skew": 1.0, "scale": 2.0, "sharpness": 1.0}])["noise"]
    [0.004444, 0.0225]
    """
    if not measures:
        raise ValueError("no measures to make a reference from")
    reference: dict[str, list[float]] = {}
    for name in DOMAIN:
        values = [float(m[name]) for m in measures if name in m and float(m[name]) > 0]
        if not values:
            continue
        lo, hi = min(values), max(values)
        margin = math.exp(REFERENCE_MARGIN * (1 + 1 / len(values)) + math.log(hi / lo) / 4)
        reference[name] = [_round(lo / margin), _round(hi * margin)]
    return reference


def check_reference(reference: Any) -> dict[str, list[float]]:
    """``reference`` if it is one :func:`reference_from` could have made ({name: [low, high]},
    finite, low <= high); raises :class:`ValueError` saying what is wrong otherwise (a params
    file reader turns it into a DataError naming the file). Names not in :data:`DOMAIN`
    (a later version's) are kept and ignored by :func:`flags`.

    >>> check_reference({"noise": [0.2, 0.1]})
    Traceback (most recent call last):
    ...
    ValueError: qc reference 'noise' is [0.2, 0.1], expected [low, high] with low <= high
    """
    if not isinstance(reference, dict):
        raise ValueError("qc reference is not an object")
    for name, bounds in reference.items():
        ok = (isinstance(bounds, list) and len(bounds) == 2
              and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
              and bounds[0] <= bounds[1])
        if not ok:
            raise ValueError(f"qc reference {name!r} is {bounds!r:.60}, expected [low, high] with low <= high")
    return reference


def unlike(measured: dict[str, float], reference: dict[str, list[float]]) -> list[str]:
    """The domain statistics of ``measured`` outside ``reference`` (names, in DOMAIN order)."""
    out = []
    for name in DOMAIN:
        bounds = reference.get(name)
        if bounds is None or name not in measured:
            continue
        if not bounds[0] <= float(measured[name]) <= bounds[1]:
            out.append(name)
    return out


def flags(measured: dict[str, float], reference: dict[str, list[float]] | None) -> list[str]:
    """Names among out_of_focus, saturated, uneven_illumination, no_texture, unlike_calibration
    (the last only when reference is given), in a fixed order.

    An image of nothing but noise (``texture`` below :data:`FOCUS_TEXTURE_MIN`) is not also
    called out of focus: there is nothing to be sharp. A faint image blurred can be both.
    """
    raised = set()
    if measured["texture"] < TEXTURE_MIN:
        raised.add("no_texture")
    if measured["sharpness"] < SHARPNESS_MIN and measured["texture"] >= FOCUS_TEXTURE_MIN:
        raised.add("out_of_focus")
    if max(measured["clipped_low"], measured["clipped_high"]) > CLIPPED_MAX:
        raised.add("saturated")
    if measured["illumination"] > ILLUMINATION_MAX:
        raised.add("uneven_illumination")
    if reference is not None and unlike(measured, reference):
        raised.add("unlike_calibration")
    return [name for name in FLAGS if name in raised]
