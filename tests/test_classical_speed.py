"""The faster phase method gives the same masks and scores, bit for bit, as the first version.

The first version of :func:`monolayer.backends.phase.segment_phase` (and the hole
filling it used) is kept here, verbatim but for names, as the reference; the
example images are also checked against SHA-256s of masks and scores computed
before the speed-up. Timings are for ``benchmarks/classical_speed.py``, not tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from monolayer.backends import phase
from monolayer.backends.phase import SCORE_THRESHOLD, PhaseParams, noise_sigma, segment_phase
from monolayer.io.images import load_image, preprocess, to_grayscale
from monolayer.morphology import fill_holes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "usiigaci" / "images"

# sha256(np.packbits(mask)), sha256(score.tobytes()) from the code before the speed-up.
BEFORE = {
    "set20.tif": ("72fece1ff3e2f2368d979e851808b6983f944779c772216995075b2dd62b4c95",
                  "01bb66320974bb1b2adedd54621cffa45bf8856e3d1624d0824bd30789ddd600"),
    "set26.tif": ("33fec4d70bf5a38c90c2808cc8ade096be5455f10861cc558c2afb735e416aba",
                  "ecc2ec55ec71ee0b9a6f1965846a3623d887cd060aee4b4e981965c8531526c1"),
    "set30.tif": ("e842e0a950e4071e30fdc3bf47e7fe4ad4a7fd7f242c85f8f8110db444f5feaf",
                  "b787a7a9461aab3beba9f0e5aa80580917856aab6b09b26c4585f7eb21854775"),
}


# --- the first version, the reference -------------------------------------------------

def _old_remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not m.any():
        return m.copy()
    labels, n = ndi.label(m, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _old_fill_holes(mask: np.ndarray, max_size: int | None = None) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    filled = ndi.binary_fill_holes(m)
    if max_size is None:
        return filled
    holes, n = ndi.label(filled & ~m)
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    small = sizes <= max_size
    small[0] = False
    return m | small[holes]


def _old_disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def _old_background_level(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    i = int(np.argmax(ndi.gaussian_filter1d(hist.astype(np.float64), 2)))
    return 0.5 * float(edges[i] + edges[i + 1])


def old_segment_phase(image: np.ndarray, params: PhaseParams = PhaseParams()) -> tuple[np.ndarray, np.ndarray]:
    a = np.nan_to_num(np.asarray(image, dtype=np.float32))
    mean = ndi.gaussian_filter(a, params.window_sigma)
    mean_sq = ndi.gaussian_filter(a * a, params.window_sigma)
    texture = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    threshold = max(params.t_abs, params.k_noise * noise_sigma(a))
    mask = texture > threshold
    if params.close_radius > 0:
        mask = ndi.binary_closing(mask, _old_disk(params.close_radius), border_value=0)
    mask = _old_fill_holes(mask, params.max_hole)
    if params.erode_radius > 0:
        mask = ndi.binary_erosion(mask, _old_disk(params.erode_radius), border_value=1)
    if params.halo_delta is not None and mask.any():
        background = a[~mask] if (~mask).sum() > 0.02 * mask.size else a.ravel()
        bright = ndi.gaussian_filter(a, 1.0) > _old_background_level(background) + params.halo_delta
        mask = _old_fill_holes(mask & ~bright, params.max_hole)
    mask = _old_remove_small_objects(mask, params.min_size)
    score = np.clip(texture / np.float32(2.0 * threshold), 0.0, 1.0)
    score = np.where(mask, np.maximum(score, np.float32(SCORE_THRESHOLD)), np.minimum(score, np.float32(0.499)))
    return mask, score.astype(np.float32)


# --- images ----------------------------------------------------------------------------

def phase_like(seed: int, height: int = 520, width: int = 704, cells: int | None = None) -> np.ndarray:
    """Textured cells with bright halos on a noisy, unevenly lit field (as benchmarks/nightly.py)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = 110.0 + 10.0 * (xx / width) + rng.normal(0, 2.0, (height, width))
    for _ in range(int(rng.integers(5, 80)) if cells is None else cells):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        a, b = rng.uniform(8, 30), rng.uniform(6, 18)
        angle = rng.uniform(0, np.pi)
        y0, y1 = max(0, cy - 32), min(height, cy + 32)
        x0, x1 = max(0, cx - 32), min(width, cx + 32)
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
        r = np.sqrt(u * u + v * v)
        patch = image[y0:y1, x0:x1]
        inside = r < 1
        patch[inside] += rng.normal(0, 22, int(inside.sum()))
        patch[(r >= 1) & (r < 1.25)] += 50
    raw = np.clip(image, 0, 255).astype(np.uint8)
    return preprocess(to_grayscale(raw), raw.dtype, "percentile")


def assert_same(image: np.ndarray, params: PhaseParams = PhaseParams()) -> None:
    old_mask, old_score = old_segment_phase(image, params)
    mask, score = segment_phase(image, params)
    assert mask.dtype == bool and score.dtype == np.float32
    assert np.array_equal(mask, old_mask)
    assert score.tobytes() == old_score.tobytes()


# --- tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BEFORE))
def test_example_images_give_the_masks_and_scores_of_before(name):
    loaded = load_image(EXAMPLES / name)
    image = preprocess(to_grayscale(loaded.array), loaded.array.dtype, "percentile")
    mask, score = segment_phase(image)
    assert (hashlib.sha256(np.packbits(mask).tobytes()).hexdigest(),
            hashlib.sha256(score.tobytes()).hexdigest()) == BEFORE[name]
    assert_same(image)


@pytest.mark.parametrize("seed", range(6))
def test_generated_livecell_sized_images_match_the_first_version(seed):
    assert_same(phase_like(seed))


def test_a_dense_layer_matches_the_first_version():
    # Nearly all foreground: the halo step falls back to the whole image's histogram.
    assert_same(phase_like(7, 160, 200, cells=400))


@pytest.mark.parametrize("params", [
    PhaseParams(max_hole=None),
    PhaseParams(close_radius=0, erode_radius=0),
    PhaseParams(close_radius=1, erode_radius=4, halo_delta=None),
    PhaseParams(close_radius=3, erode_radius=1, max_hole=5, min_size=1),
    PhaseParams(window_sigma=2.5, t_abs=0.01, close_radius=5, erode_radius=5),
], ids=repr)
def test_other_parameters_match_the_first_version(params):
    assert_same(phase_like(11, 200, 260), params)


@pytest.mark.parametrize("image", [
    np.zeros((40, 30), np.float32),
    np.random.default_rng(3).random((64, 48)).astype(np.float32),
    np.random.default_rng(4).random((7, 5)),
    np.array([[np.nan, 0.5, 0.7], [0.2, np.nan, 0.9], [0.1, 0.4, 0.3]], np.float32),
], ids=["flat", "noise", "tiny-float64", "nan"])
def test_edge_cases_match_the_first_version(image):
    assert_same(image, PhaseParams(min_size=2, close_radius=1, erode_radius=1))
    assert_same(image)


def test_the_input_image_is_not_modified():
    image = phase_like(5, 120, 150)
    before = image.copy()
    segment_phase(image)
    assert image.tobytes() == before.tobytes()


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 6])
def test_disk_morphology_by_1d_filters_equals_scipy(radius):
    rng = np.random.default_rng(radius)
    disk = _old_disk(radius)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        assert np.array_equal(phase._closing(m, radius), ndi.binary_closing(m, disk, border_value=0))
        for border in (0, 1):
            assert np.array_equal(phase._erosion(m, radius, border), ndi.binary_erosion(m, disk, border_value=border))


@pytest.mark.parametrize("max_size", [None, 0, 1, 4, 30])
def test_hole_filling_by_one_labelling_equals_the_flood_fill(max_size):
    rng = np.random.default_rng(0 if max_size is None else max_size + 1)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.uniform(0.2, 0.9)
        assert np.array_equal(fill_holes(m, max_size), _old_fill_holes(m, max_size))


@pytest.mark.parametrize("seed", range(6))
def test_percentiles_from_a_histogram_equal_numpys(seed):
    """normalize's 0.5th/99.5th percentiles of an 8- or 16-bit image come from a histogram
    (several times faster than numpy's partition): the same float64 numbers, bit for bit."""
    from monolayer.io.images import _percentiles

    rng = np.random.default_rng(seed)
    top = 256 if seed % 2 else 65536
    for n in (4096, 4097, 5000, 99_991, 366_080):
        values = [rng.integers(0, top, n), np.clip(rng.normal(top / 2, top / 80, n), 0, top - 1).round(),
                  np.where(rng.random(n) < 0.995, 7, rng.integers(0, top, n))]
        for a in values:
            a = a.astype(np.float32).reshape(1, -1)
            qs = (0.5, 99.5, float(rng.uniform(0, 100)), 0.0, 100.0)
            assert _percentiles(a, *qs) == [float(v) for v in np.percentile(a, list(qs))]
    # Not integers, negative or beyond 16 bits: numpy's own percentile.
    for a in (rng.random(5000), rng.integers(-5, 5, 5000), rng.integers(0, 70_000, 5000)):
        a = a.astype(np.float32)
        assert _percentiles(a, 0.5, 99.5) == [float(v) for v in np.percentile(a, [0.5, 99.5])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentiles_keep_the_sign_of_a_negative_zero(dtype):
    """A -0.0 order statistic is numpy's -0.0, not the histogram's 0.0 (with or without +0.0
    pixels beside it, whatever the share of them)."""
    from monolayer.io.images import _percentiles

    rng = np.random.default_rng(3)
    for share in (0.001, 0.3, 0.9, 1.0):
        a = rng.integers(0, 256, 5000).astype(dtype)
        a[rng.random(5000) < share] = -0.0
        a[rng.random(5000) < share / 2] = 0.0
        qs = (0.0, 0.5, 25.0, 99.5)
        got, ref = _percentiles(a, *qs), [float(v) for v in np.percentile(a, list(qs))]
        assert got == ref and [np.signbit(v) for v in got] == [np.signbit(v) for v in ref]


def test_percentiles_of_other_dtypes_are_numpys_without_a_warning():
    """float16 (whose largest value is below 65535) and integer arrays: numpy's own numbers,
    and no overflow warning (warnings are errors in this test suite)."""
    from monolayer.io.images import _percentiles

    rng = np.random.default_rng(4)
    for a in (rng.integers(0, 2000, 5000).astype(np.float16), np.full(5000, 65504, np.float16),
              rng.integers(0, 65536, 5000).astype(np.uint32), rng.integers(0, 256, 5000).astype(np.int64)):
        qs = (0.5, 37.3, 99.5)
        got, ref = _percentiles(a, *qs), [float(v) for v in np.percentile(a, list(qs))]
        assert got == ref
