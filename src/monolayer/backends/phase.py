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


def noise_sigma(image: np.ndarray, block: int = 16, percentile: float = 2.0) -> float:
    """Robust pixel-noise sigma of an image.

    Diagonal Haar details ``(a00 - a10 - a01 + a11) / 2`` have standard deviation
    sigma for white noise and barely respond to smooth structure. Their RMS is
    taken per ``block`` x ``block`` tile and a low percentile of the tiles kept,
    so textured cells (even a confluent layer) hardly inflate the estimate. RMS
    rather than a median, because medians of 8-bit data jump in quantisation steps.
    """
    a = np.asarray(image, dtype=np.float64)
    hh = (a[:-1:2, :-1:2] - a[1::2, :-1:2] - a[:-1:2, 1::2] + a[1::2, 1::2]) / 2.0
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


def segment_phase(image: np.ndarray, params: PhaseParams = PhaseParams()) -> tuple[np.ndarray, np.ndarray]:
    """Foreground mask and score map of a normalised (0..1) phase-contrast image.

    The score is texture / (2 x threshold), clipped to [0, 1], and then moved to
    at least 0.5 inside the final mask and below 0.5 outside, so that
    ``mask == (score >= 0.5)`` holds exactly. It is a texture score, not a
    calibrated probability.
    """
    a = np.nan_to_num(np.asarray(image, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError("segment_phase expects a 2-D image")
    mean = ndi.gaussian_filter(a, params.window_sigma)
    mean_sq = ndi.gaussian_filter(a * a, params.window_sigma)
    texture = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    threshold = max(params.t_abs, params.k_noise * noise_sigma(a))
    mask = texture > threshold
    if params.close_radius > 0:
        mask = ndi.binary_closing(mask, _disk(params.close_radius), border_value=0)
    mask = fill_holes(mask, params.max_hole)
    if params.erode_radius > 0:
        mask = ndi.binary_erosion(mask, _disk(params.erode_radius), border_value=1)
    if params.halo_delta is not None and mask.any():
        background = a[~mask] if (~mask).sum() > 0.02 * mask.size else a.ravel()
        bright = ndi.gaussian_filter(a, 1.0) > _background_level(background) + params.halo_delta
        mask = fill_holes(mask & ~bright, params.max_hole)
    mask = remove_small_objects(mask, params.min_size)
    score = np.clip(texture / np.float32(2.0 * threshold), 0.0, 1.0)
    score = np.where(mask, np.maximum(score, np.float32(SCORE_THRESHOLD)), np.minimum(score, np.float32(0.499)))
    return mask, score.astype(np.float32)
