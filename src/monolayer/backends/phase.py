"""Phase-contrast foreground by local texture: the default ``classical`` method.

In the spirit of PHANTAST (Jaccard et al. 2014): cells in phase contrast are
textured, the background is flat, so the local standard deviation of the
normalised image separates them. Unlike PHANTAST the threshold is absolute and
never below a measured noise floor, so a flat or pure-noise image (an empty
well) gives an empty mask instead of "cells" in the noise.

Steps: texture (local std in a Gaussian window) > threshold; closing and filling
of small holes so flat cell interiors count; erosion to undo the spread of the window;
removal of the bright phase halo (brighter than the background grey level);
removal of small objects.

Known limits: holes larger than ``max_hole`` stay background, so a dense layer
of very large flat cells is under-counted; a flow-channel wall or well edge along the border is textured and
is not removed explicitly; thin protrusions thinner than the closing radius may
be lost or bridged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from monolayer.morphology import fill_holes, remove_small_objects

SCORE_THRESHOLD = 0.5
"""The score is moved so that ``mask == (score >= SCORE_THRESHOLD)`` holds exactly."""


@dataclass(frozen=True)
class PhaseParams:
    """Parameters of the phase method; lengths in pixels, intensities in normalised units."""

    window_sigma: float = 1.5
    """Gaussian window of the local standard deviation; small, so the mask follows cell edges."""
    t_abs: float = 0.03
    """Texture threshold, as a fraction of the image's robust intensity range (background
    texture is about 0.01-0.02, cell texture 0.03 and up)."""
    k_noise: float = 2.0
    """The threshold is at least this many times the pixel-noise sigma; the local std of
    pure noise is about 1 sigma, so noise alone never passes."""
    close_radius: int = 2
    """Closing before hole filling, bridging gaps so flat cell interiors get enclosed."""
    max_hole: int | None = 1000
    """Only holes up to this many pixels are filled: flat cell interiors are small, while
    larger holes are usually background enclosed by spread cells. None fills every hole
    (better for dense layers of large flat cells, worse for sparse spread cells)."""
    erode_radius: int = 3
    """Erosion after filling: trims the outward spread of the texture window."""
    halo_delta: float | None = 0.10
    """Pixels brighter than the background grey level by more than this are phase halo,
    not cell (None: no halo removal)."""
    min_size: int = 300
    """Objects smaller than this many pixels (debris, dust) are dropped."""


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def _disk_rectangles(radius: int) -> list[tuple[int, int]]:
    """Half-heights and half-widths of centred rectangles whose union is ``_disk(radius)``.

    Morphology by a union of rectangles is the OR (dilation) or AND (erosion) of
    morphology by each rectangle, and a rectangle is two 1-D running max/min
    filters: the same result as ``ndi.binary_*`` with the disk, several times faster.
    """
    half_widths = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    return [(dy, w) for dy, w in enumerate(half_widths) if dy == radius or half_widths[dy + 1] < w]


def _rank_by_disk(mask: np.ndarray, radius: int, dilate: bool, border_value: int) -> np.ndarray:
    """Binary dilation or erosion of ``mask`` by ``_disk(radius)``; pixels outside the
    image count as ``border_value`` (as in ``ndi.binary_dilation``/``binary_erosion``)."""
    a = np.asarray(mask, dtype=bool)
    combine = np.logical_or if dilate else np.logical_and
    out: np.ndarray | None = None
    for half_h, half_w in _disk_rectangles(radius):
        r = _run_1d(_run_1d(a, half_w, 1, dilate, border_value), half_h, 0, dilate, border_value)
        if out is None:
            out = r.copy() if r is a else r
        else:
            combine(out, r, out=out)
    assert out is not None
    return out


def _run_1d(a: np.ndarray, half: int, axis: int, dilate: bool, border_value: int) -> np.ndarray:
    """Running OR (``dilate``) or AND of ``a`` over ``2 * half + 1`` pixels along ``axis``,
    outside pixels being ``border_value``: shifted copies, cheap for the small radii used."""
    if half == 0:
        return a
    combine = np.logical_or if dilate else np.logical_and
    n = a.shape[axis]
    out = a.copy()

    def part(start: int | None, stop: int | None) -> tuple[slice, ...]:
        return (slice(start, stop),) if axis == 0 else (slice(None), slice(start, stop))

    for shift in range(1, min(half, n - 1) + 1):
        combine(out[part(shift, None)], a[part(None, -shift)], out=out[part(shift, None)])
        combine(out[part(None, -shift)], a[part(shift, None)], out=out[part(None, -shift)])
    if bool(border_value) == dilate:  # the outside pixels decide those within ``half`` of an edge
        edge = min(half, n)
        out[part(None, edge)] = border_value
        out[part(n - edge, None)] = border_value
    return out


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_closing(mask, _disk(radius), border_value=0)``, by 1-D filters."""
    return _rank_by_disk(_rank_by_disk(mask, radius, True, 0), radius, False, 0)


def _erosion(mask: np.ndarray, radius: int, border_value: int) -> np.ndarray:
    """``ndi.binary_erosion(mask, _disk(radius), border_value=border_value)``, by 1-D filters."""
    return _rank_by_disk(mask, radius, False, border_value)


def noise_sigma(image: np.ndarray, block: int = 16, percentile: float = 2.0) -> float:
    """Robust pixel-noise sigma of an image.

    Diagonal Haar details ``(a00 - a10 - a01 + a11) / 2`` have standard deviation
    sigma for white noise and barely respond to smooth structure. Their RMS is
    taken per ``block`` x ``block`` tile and a low percentile of the tiles kept,
    so textured cells (even a confluent layer) hardly inflate the estimate. RMS
    rather than a median, because medians of 8-bit data jump in quantisation steps.
    """
    a = np.asarray(image)
    if a.dtype != np.float32:
        a = a.astype(np.float64)
    # In float64 from the float32 pixels (exact), without a float64 copy of the whole image.
    hh = np.subtract(a[:-1:2, :-1:2], a[1::2, :-1:2], dtype=np.float64)
    hh -= a[:-1:2, 1::2]
    hh += a[1::2, 1::2]
    hh /= 2.0
    b = max(block // 2, 1)
    h, w = (hh.shape[0] // b) * b, (hh.shape[1] // b) * b
    if h == 0 or w == 0:
        return float(np.sqrt(np.mean(hh**2))) if hh.size else 0.0
    tiles = hh[:h, :w].reshape(h // b, b, w // b, b)
    return float(np.percentile(np.sqrt((tiles**2).mean(axis=(1, 3))), percentile))


def _background_level(values: np.ndarray) -> float:
    """Histogram mode of values in [0, 1]: the background grey level."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    i = int(np.argmax(ndi.gaussian_filter1d(hist.astype(np.float64), 2)))
    return 0.5 * float(edges[i] + edges[i + 1])


def as_phase_input(image: np.ndarray, who: str = "segment_phase") -> np.ndarray:
    """``image`` as the float32 2-D array the phase stages take, NaN and infinities zeroed."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{who} expects a 2-D image")
    return a if np.isfinite(a).all() else np.nan_to_num(a)


def local_std(a: np.ndarray, sigma: float) -> np.ndarray:
    """Texture: the local standard deviation of ``a`` in a Gaussian window, a new array.

    In-place float32 arithmetic in a fixed order: :func:`segment_phase` and the
    calibration's cached stages (:mod:`monolayer.calibrate`) get the same bits."""
    mean = ndi.gaussian_filter(a, sigma)
    texture = np.multiply(a, a)
    ndi.gaussian_filter(texture, sigma, output=texture)  # mean of squares
    np.subtract(texture, np.multiply(mean, mean, out=mean), out=texture)
    np.sqrt(np.maximum(texture, 0.0, out=texture), out=texture)
    return texture


def remove_halo(a: np.ndarray, mask: np.ndarray, halo_delta: float | None, max_hole: int | None,
                smoothed: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """``mask`` less the bright phase halo (``a`` smoothed by a Gaussian of sigma 1 brighter
    than the background grey level by more than ``halo_delta``), holes refilled. ``smoothed``
    gives that smoothed image when the caller keeps one; ``mask`` itself when there is no halo
    step or nothing to trim."""
    if halo_delta is None or not mask.any():
        return mask
    outside = ~mask
    background = a[outside] if np.count_nonzero(outside) > 0.02 * mask.size else a.ravel()
    blurred = smoothed() if smoothed is not None else ndi.gaussian_filter(a, 1.0)
    bright = blurred > _background_level(background) + halo_delta
    return fill_holes(mask & ~bright, max_hole)


def segment_phase(image: np.ndarray, params: PhaseParams = PhaseParams()) -> tuple[np.ndarray, np.ndarray]:
    """Foreground mask and score map of a normalised (0..1) phase-contrast image.

    The score is texture / (2 x threshold), clipped to [0, 1], and then moved to
    at least 0.5 inside the final mask and below 0.5 outside, so that
    ``mask == (score >= 0.5)`` holds exactly. It is a texture score, not a
    calibrated probability.
    """
    # Speed without changing a bit (tests/test_classical_speed.py holds the first version):
    # in-place float32 arithmetic in the same order, disk morphology by 1-D running
    # filters, and hole filling by one labelling of the background.
    a = as_phase_input(image)
    texture = local_std(a, params.window_sigma)
    threshold = max(params.t_abs, params.k_noise * noise_sigma(a))
    mask = texture > threshold
    if params.close_radius > 0:
        mask = _closing(mask, params.close_radius)
    mask = fill_holes(mask, params.max_hole)
    if params.erode_radius > 0:
        mask = _erosion(mask, params.erode_radius, 1)
    mask = remove_halo(a, mask, params.halo_delta, params.max_hole)
    mask = remove_small_objects(mask, params.min_size)
    score = np.divide(texture, np.float32(2.0 * threshold), out=texture)
    np.clip(score, 0.0, 1.0, out=score)
    np.maximum(score, np.float32(SCORE_THRESHOLD), out=score, where=mask)
    np.minimum(score, np.float32(0.499), out=score, where=~mask)
    return mask, score
