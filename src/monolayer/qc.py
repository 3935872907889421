"""Image-quality and domain checks: a few named numbers per image, and the flags they raise.

A fixed method (and a calibrated one) is only as good as the images it was made on
look like the image at hand. :func:`measure` takes a few cheap numbers from the
image as read; :func:`flags` turns them into warnings:

``invalid_pixels``
    some pixels of a float image are NaN or infinite (``invalid``): they are taken as
    a neutral grey, so part of the field is not measured;
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

QC_VERSION = 2
"""Bumped whenever a measure changes meaning: a reference made by another version is
not comparable (a params file should store it next to its ``qc_reference``). 2: the
clipped fractions count a pile-up at a level (not the pixels equal to the image's own
extremes); ``contrast`` (spread over the median: moved by an intensity offset) is gone;
a flat image's noise is 0."""

FLAGS = ("invalid_pixels", "out_of_focus", "saturated", "uneven_illumination", "no_texture",
         "unlike_calibration")
"""Every flag, in the order :func:`flags` lists them."""

DOMAIN = ("noise", "skew", "scale", "sharpness")
"""The measures that describe the imaging (modality, microscope, camera, magnification)
rather than the culture: the ones ``unlike_calibration`` compares with a reference.
Each is a ratio of intensity differences, so an offset (int16 vs uint16 of the same
pixels, a subtracted background) and the dtype do not move them. Confluence moves them little (``benchmarks/qc_dev.py`` checks: the same well at 21 %
and 95 % confluence, and leave-one-out within each source)."""

# Thresholds (benchmarks/qc_dev.py prints the values on the development images and
# their degraded versions; the margins below are what it shows).
SHARPNESS_MIN = 0.4
"""out_of_focus below this. Development images: 0.56 and up; blurred by a Gaussian of
sigma 3 px (with the noise put back) or 4 px: 0.35 and below."""
CLIPPED_MAX = 0.02
"""saturated above this fraction of pixels piled up at one level at either end of the
histogram (``clipped_low``/``clipped_high``). Development images: up to 0.009
(Usiigaci's halos clip at 65535); over-exposed so the 90th percentile hits the top:
0.10 and up; clipped at their own 95th percentile with two hot pixels above: 0.044 and
up; blurred: up to 0.005."""
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
96-100 % of the other source's."""

#: Range of :data:`DOMAIN` over the 28 development images (12 LIVECell, 16 Usiigaci),
#: widened as :func:`reference_from` does: what the classical default parameters were
#: tuned on. Printed by ``benchmarks/qc_dev.py``.
DEV_REFERENCE: dict[str, list[float]] = {
    "noise": [0.001737, 0.04263], "skew": [0.3836, 3.775], "scale": [0.7807, 17.59], "sharpness": [0.2735, 1.813],
}

_PERCENTILE = 99.5
TAIL = 0.005
"""A pile-up is looked for among the levels with less than this fraction of the pixels
beyond them: a few hot (or dead) pixels past the clipping level do not hide it."""
_BINS = 1 << 16


def _haar(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal Haar details and 2 x 2 block means (one level of the pyramid), in one pass."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    s1 = a[0:h:2, 0:w:2] + a[1:h:2, 1:w:2]
    s2 = a[1:h:2, 0:w:2] + a[0:h:2, 1:w:2]
    return (s1 - s2) * np.float32(0.5), (s1 + s2) * np.float32(0.25)


def _noise_sigma(a: np.ndarray, block: int = 8, percentile: float = 2.0, details: np.ndarray | None = None) -> float:
    """Pixel-noise sigma: RMS of diagonal Haar details per tile, a low percentile of the
    tiles, so cells (even a confluent layer) hardly inflate it (as ``phase.noise_sigma``)."""
    d = _haar(a)[0] if details is None else details
    h, w = (d.shape[0] // block) * block, (d.shape[1] // block) * block
    if h == 0 or w == 0:
        return float(np.sqrt(np.mean(d * d))) if d.size else 0.0
    d = d[:h, :w]
    tiles = np.einsum("ijkl,ijkl->ik", *(d.reshape(h // block, block, w // block, block),) * 2).ravel()
    live = tiles[tiles > 0]
    tiles = live if live.size >= 16 else tiles  # exactly flat tiles (clipped, filled) hold no noise to measure
    return float(np.sqrt(np.percentile(tiles, percentile) / (block * block)))


def _halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 block means (one level of the pyramid)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return (a[0:h:2, 0:w:2] + a[1:h:2, 0:w:2] + a[0:h:2, 1:w:2] + a[1:h:2, 1:w:2]) * np.float32(0.25)


def _curvature(a: np.ndarray) -> tuple[float, float]:
    """Mean square and high percentile (nearest rank) of the horizontal and vertical second
    differences, over about 48 rows and 48 columns (enough samples, a fraction of the time)."""
    rows = a[:: max(1, a.shape[0] // 48), :]
    cols = a[:, :: max(1, a.shape[1] // 48)]
    r = np.abs(rows[:, 2:] + rows[:, :-2] - 2 * rows[:, 1:-1]).ravel()
    c = np.abs(cols[2:, :] + cols[:-2, :] - 2 * cols[1:-1, :]).ravel()
    both = np.concatenate([r, c])
    k = min(both.size - 1, int(round(_PERCENTILE / 100 * (both.size - 1))))
    return float(np.dot(both, both) / both.size), float(np.partition(both, k)[k])


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


def _histogram(s: np.ndarray, integral: bool) -> tuple[np.ndarray, float, float]:
    """Counts per level of the sample ``s`` (1-D), the value of level 0 and the step between
    levels. Integer data whose range fits in 2**16 levels: one level per value (12-bit data
    in 16-bit files, 8-bit data scaled to 16 bits: the levels between stay empty). Otherwise
    2**16 levels over the range; when a few far outliers squeeze the robust range into under
    256 of them, again over the robust range widened by its span, with everything beyond
    in one end level on each side."""
    a, b = float(s.min()), float(s.max())
    step = 1.0 if integral and b - a < _BINS else max((b - a) / (_BINS - 1), 1e-30)
    counts = np.bincount(((s - a) * np.float32(1 / step) + np.float32(0.5)).astype(np.intp), minlength=1)
    if step != 1.0:
        cum = np.cumsum(counts)
        i_lo, i_hi = np.searchsorted(cum, [0.005 * s.size, 0.995 * s.size])
        if i_hi - i_lo < 256:
            span = max(float(i_hi - i_lo), 1.0) * step
            a, b = a + i_lo * step - span, a + i_hi * step + span
            step = (b - a) / (_BINS - 3)
            index = np.clip((s - a) * np.float32(1 / step) + np.float32(1.5), 0, _BINS - 1).astype(np.intp)
            counts = np.bincount(index, minlength=_BINS)
            a -= step  # level 0 holds everything below, the last level everything above
    return counts, a, step


def _pileup(counts: np.ndarray, occupied: np.ndarray, beyond: np.ndarray, n: int) -> float:
    """The largest excess of pixels at one level over what the next three occupied levels
    inside it predict (their fall-off continued: geometric, or Gaussian when all three fall
    and the fall steepens), among the levels with under ``TAIL`` of the pixels beyond them
    (``occupied`` ordered from the extreme inwards, ``beyond`` the count past each): a
    clipping level is a spike at the end of the histogram, a natural tail falls off there."""
    candidates = np.flatnonzero(beyond < TAIL * n)
    if candidates.size == 0:
        return 0.0
    c1 = np.append(counts[occupied[1:]], 0).astype(np.float64)
    c2 = np.append(c1[1:], 0.0)
    c3 = np.append(c2[1:], 0.0)
    # What the histogram's own fall-off predicts there: the next level's count, times its
    # ratio to the one after when it falls, times the change of that ratio when the fall
    # steepens (a Gaussian tail, exactly: coarse levels of a narrow histogram fall steeply).
    r1 = np.divide(c1, c2, out=np.ones_like(c1), where=c2 > 0)
    r2 = np.divide(c2, c3, out=np.ones_like(c1), where=c3 > 0)
    steepening = np.where(r2 < 1.0, np.minimum(1.0, np.divide(r1, r2, out=np.ones_like(c1), where=r2 > 0)), 1.0)
    expected = c1 * np.minimum(1.0, r1) * steepening
    return max(float(np.max(counts[occupied[candidates]] - expected[candidates])) / n, 0.0)


def _round(value: float) -> float:
    return float(f"{value:.4g}") if math.isfinite(value) else 0.0


def measure(gray: np.ndarray, dtype: np.dtype) -> dict[str, float]:
    """Named image-quality numbers of one image as read (2-D grayscale, values as stored;
    `dtype` the stored dtype, for the quantisation floor and a flat image's clipping).

    ``clipped_low``/``clipped_high``: the fraction of pixels piled up at one level at the
    bottom/top of the histogram, in excess of the next occupied level inside it (a clipping
    level is a spike there; a natural tail falls off). The level is looked for among those
    with under :data:`TAIL` of the pixels beyond them, so a few hot or dead pixels past the
    clipping level do not hide it, and it need not be the dtype's end (12-bit data in a
    16-bit file clips at 4095); every pixel at the dtype's own end counts too. Counted on every other row and column; float data and
    ranges over 2**16 levels are binned in 2**16 levels. A flat image counts as clipped only
    at its dtype's ends. Every other number is unchanged by adding a constant to the
    image or by the dtype it is stored in: ``noise``: pixel-noise sigma over the robust
    intensity range (0.5th..99.5th percentile; 0 for a flat image); ``skew``: (p99.5 - median) / (median - p0.5), above 1 when bright
    halos outweigh dark cells; ``texture``: structure at 4-16 px above the noise, in noise
    sigmas; ``sharpness``: the strongest 2-px curvature over the strongest at any scale
    (1 to 16 px), about 1 for sharp edges; ``scale``: the energy-weighted scale of the
    structure in px; ``illumination``: the background surface's range over the robust
    range; ``invalid``: the fraction of pixels that are NaN or infinite (float images; they
are measured, and segmented, as if they had a neutral value, so the number covers
pixels nobody saw). Cheap: about 3 ms for 704 x 520 (``benchmarks/qc_dev.py`` times it).

    >>> ramp = np.tile(np.arange(256, dtype=np.float32), (64, 1))
    >>> clipped = np.minimum(ramp, 200); clipped[0, 0] = 255  # clipped at 200, one hot pixel
    >>> measure(ramp, np.uint8)["clipped_high"], measure(clipped, np.uint8)["clipped_high"]
    (0.0, 0.2109)
    >>> measure(np.full((64, 64), 7, np.float32), np.uint8)["noise"]
    0.0
    """
    x = np.asarray(gray, dtype=np.float32)
    if x.ndim != 2 or x.size == 0:
        raise ValueError("qc.measure expects a non-empty 2-D image")
    dtype = np.dtype(dtype)
    invalid = 0.0
    if dtype.kind not in "iub" and not np.isfinite(x).all():
        invalid = float(np.count_nonzero(~np.isfinite(x))) / x.size
        finite = x[np.isfinite(x)]
        x = np.where(np.isfinite(x), x, np.median(finite) if finite.size else 0.0).astype(np.float32)
    low, high = float(x.min()), float(x.max())
    names = ("clipped_low", "clipped_high", "noise", "skew", "texture", "sharpness", "scale",
             "illumination")
    if high == low:  # flat: nothing varies; clipped only if it sits at the end of what the file can hold
        ends = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" else (None, None)
        return dict.fromkeys(names, 0.0) | {"clipped_low": float(low == ends[0]),
                                              "clipped_high": float(high == ends[1]),
                                              "invalid": _round(invalid)}

    # Squares of values near float32's top overflow: measure a scaled copy (every number
    # below is a ratio, so the scale cancels; only the rounding floor is in stored units).
    unit = max(abs(low), abs(high))
    unit = unit if unit > 1e15 else 1.0
    if unit != 1.0:
        x = (x.astype(np.float64) / unit).astype(np.float32)

    # Histogram of every other row and column: percentiles and the clipping pile-ups.
    sample = x[::2, ::2].ravel() if min(x.shape) >= 8 else x.ravel()
    integral = dtype.kind in "iub" and unit == 1.0 and bool(np.array_equal(sample[:4096], np.rint(sample[:4096])))
    counts, origin, step = _histogram(sample, integral)
    n = sample.size
    cum = np.cumsum(counts)
    occupied = np.flatnonzero(counts)
    clipped_high = _pileup(counts, occupied[::-1], (n - cum[occupied])[::-1], n)
    clipped_low = _pileup(counts, occupied, cum[occupied] - counts[occupied], n)
    if integral and step == 1.0 and dtype.kind in "iu":  # at the file's own ends every pixel is clipped
        info = np.iinfo(dtype)
        for end, i in ((info.min, 0), (info.max, 1)):
            index = int(end - origin)
            if 0 <= index < counts.size:
                at_end = counts[index] / n
                clipped_low, clipped_high = ((max(clipped_low, at_end), clipped_high) if i == 0
                                             else (clipped_low, max(clipped_high, at_end)))
    if max(clipped_low, clipped_high) >= 1 - 2 * TAIL:  # all but a few pixels at one level: flat
        level = occupied[np.argmax(counts[occupied])] * step + origin
        ends = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" and unit == 1.0 else (None, None)
        clipped_low, clipped_high = (float(clipped_low * (ends[0] is not None and abs(level - ends[0]) <= step)),
                                     float(clipped_high * (ends[1] is not None and abs(level - ends[1]) <= step)))
    q = np.searchsorted(cum, np.array([0.005, 0.5, _PERCENTILE / 100]) * n) * step + origin
    lo, median, hi = (float(v) for v in q)
    spread = hi - lo if hi > lo else high - low

    details, half = _haar(x) if min(x.shape) >= 2 else (x, x)
    sigma = _noise_sigma(x, details=details) if min(x.shape) >= 2 else 0.0
    if dtype.kind in "iub":  # integers carry at least their rounding error (1/sqrt(12) step)
        sigma = max(sigma, math.sqrt(1 / 12) / unit)
    sigma = max(sigma, 1e-4 * spread)  # float data can hold exact copies: no noise is not a noise of 0
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

    e = np.asarray(energy + [0.0] * (5 - len(energy)))
    p = np.asarray(peak + [0.0] * (5 - len(peak)))
    scales = 2.0 ** np.arange(5)
    return {
        "clipped_low": _round(clipped_low),
        "clipped_high": _round(clipped_high),
        "noise": _round(sigma / spread),
        "skew": _round((hi - median) / max(median - lo, step)),
        "texture": _round(math.sqrt(e[2] + e[3] + e[4]) / sigma),
        "sharpness": _round(p[1] / p.max() if p.max() > 0 else 0.0),
        "scale": _round(float((e * scales).sum() / e.sum()) if e.sum() > 0 else 0.0),
        "illumination": _round(illumination / spread),
        "invalid": _round(invalid),
    }


def reference_from(measures: list[dict[str, float]]) -> dict[str, list[float]]:
    """The range of the domain statistics over calibration images ({name: [low, high]}, widened
    by a margin suited to a few images).

    Each of :data:`DOMAIN` (all positive) gets ``[min / m, max * m]`` with
    ``log m = REFERENCE_MARGIN * (1 + 1 / n) + span / 4`` (``span`` the log of max/min,
    ``n`` the number of images).

    >>> reference_from([{"noise": 0.01, "skew": 1.0, "scale": 2.0, "sharpness": 1.0}])["noise"]
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
    """Names among invalid_pixels, out_of_focus, saturated, uneven_illumination, no_texture,
    unlike_calibration (the last only when reference is given), in a fixed order.

    An image of nothing but noise (``texture`` below :data:`FOCUS_TEXTURE_MIN`) is not also
    called out of focus: there is nothing to be sharp. A faint image blurred can be both.
    """
    raised = set()
    if measured.get("invalid", 0.0) > 0:
        raised.add("invalid_pixels")
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
