"""Each model sees exactly the input its published weights expect (issue 10).

``segment`` is compared with the reference library run the way its authors run it,
on the same random weights loaded from the same file: SAM's ``SamPredictor`` on the
raw 8-bit RGB image, cellpose's ``CellposeModel.eval`` on the raw 16-bit image.
Random weights give near-constant maps that hide preprocessing differences, so the
output layers are scaled until the logits spread around 0; each comparison also
shows that the input ``segment`` gave before (the 0.5-99.5 percentile stretch)
gives a clearly different map, so the tolerance would have caught it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import torch
from scipy.special import expit

from monolayer.backends import Backend, Prediction
from monolayer.backends.sam.model import to_rgb8
from monolayer.commands.segment import SegmentOptions, plan_jobs, process_chunk
from monolayer.errors import UsageError
from monolayer.io.images import load_image, normalize, preprocess, raw_intensities, to_grayscale
from monolayer.io.inputs import InputItem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "usiigaci"
IMAGE16 = EXAMPLES / "images" / "set30.tif"
PROB_TOLERANCE = 1e-4
CELLPOSE_CROP = np.s_[:256, :320]  # non-square; keeps cellpose's CPU time low
DIAMETER, FLOW_THRESHOLD, CELLPROB_THRESHOLD = 35.0, 0.8, -1.0  # not the defaults: they must arrive


@pytest.fixture(scope="module", autouse=True)
def offline(no_network):
    """Every test here runs with outgoing connections refused (see conftest)."""


# -- preprocess itself --------------------------------------------------------------------------


def _gray(raw: np.ndarray) -> np.ndarray:
    return to_grayscale(raw)


def test_percentile_is_the_robust_stretch():
    raw = np.random.default_rng(0).integers(0, 65536, (40, 50)).astype(np.uint16)
    out = preprocess(_gray(raw), raw.dtype, "percentile")
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert np.array_equal(out, normalize(_gray(raw)))
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 2**8), (np.uint16, 2**16), (np.int16, 2**15),
                                         (np.uint32, 2**32), (np.int8, 2**7)])
def test_none_divides_integers_by_2_to_their_bits(dtype, scale):
    info = np.iinfo(dtype)
    raw = np.array([[0, 1, info.max], [info.min, 3, 2]], dtype=dtype)
    out = preprocess(_gray(raw), raw.dtype, "none")
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_array_equal(out, raw.astype(np.float32) / np.float32(scale))
    assert -1.0 <= out.min() and out.max() <= 1.0  # nothing stretched (uint32's max rounds to 2**32)
    # a power of two: undone exactly, so a model that normalises itself sees the stored values
    np.testing.assert_array_equal(out * np.float32(scale), raw.astype(np.float32))


def test_none_keeps_floats_and_bool_as_they_are():
    raw = np.array([[-3.5, 0.0], [0.25, 1e4]], dtype=np.float32)
    np.testing.assert_array_equal(preprocess(_gray(raw), raw.dtype, "none"), raw)
    bits = np.array([[True, False]])
    np.testing.assert_array_equal(preprocess(_gray(bits), bits.dtype, "none"), [[1.0, 0.0]])


def test_sam8_gives_every_8_bit_value_back_through_sams_prepare():
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = preprocess(_gray(raw), raw.dtype, "sam8")
    assert x.dtype == np.float32
    rgb = to_rgb8(x)  # what SamBackend's prepare gives ResizeLongestSide
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    assert all(np.array_equal(rgb[..., c], raw) for c in range(3))
    # a low-contrast 8-bit image is not stretched
    dim = np.full((8, 8), 40, np.uint8)
    dim[2:4] = 60
    assert np.array_equal(to_rgb8(preprocess(_gray(dim), dim.dtype, "sam8"))[..., 0], dim)


def test_sam8_reads_a_bilevel_image_as_black_and_white():
    bits = np.array([[True, False], [False, True]])
    assert to_rgb8(preprocess(_gray(bits), bits.dtype, "sam8"))[..., 0].tolist() == [[255, 0], [0, 255]]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int8])
def test_sam8_stretches_other_types_once(dtype):
    raw = (np.random.default_rng(1).random((30, 30)) * 100 + 20).astype(dtype)
    out = preprocess(_gray(raw), raw.dtype, "sam8")
    assert np.array_equal(out, normalize(_gray(raw)))


def test_non_finite_pixels_become_the_median_in_every_mode():
    raw = np.array([[1.0, np.nan, 3.0], [np.inf, 2.0, -np.inf]], dtype=np.float32)
    none = preprocess(_gray(raw), raw.dtype, "none")
    assert none.tolist() == [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]
    filled = np.where(np.isfinite(raw), raw, 2.0).astype(np.float32)
    for mode in ("percentile", "sam8"):
        out = preprocess(_gray(raw), raw.dtype, mode)
        assert np.isfinite(out).all() and np.array_equal(out, normalize(filled))
    assert not raw_intensities(np.full((2, 2), np.nan), np.dtype(np.float32)).any()


def test_unknown_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="choose one of: percentile, none, sam8"):
        preprocess(np.zeros((2, 2), np.float32), np.dtype(np.uint8), "auto")
    with pytest.raises(UsageError, match="'auto'"):
        SegmentOptions(out=Path("o"), normalize="auto")


# -- segment's wiring: the stored dtype reaches preprocess ------------------------------------------


class Recorder(Backend):
    """Keeps the images it is given; predicts nothing."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, image: np.ndarray) -> Prediction:
        self.seen.append(image.copy())
        return Prediction(mask=np.zeros(image.shape, bool))

    def describe(self) -> dict[str, Any]:
        return {"model": self.name}


@pytest.mark.parametrize("mode", ["percentile", "none", "sam8"])
def test_segment_gives_the_backend_preprocess_of_the_stored_image(tmp_path, mode):
    raw16 = tifffile.imread(IMAGE16)[:64, :96]
    raw8 = np.round(raw16 / 257).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a16.tif", raw16)
    tifffile.imwrite(tmp_path / "a8.tif", raw8)
    jobs = plan_jobs([InputItem(str(tmp_path / name)) for name in ("a16.tif", "a8.tif")])
    options = SegmentOptions(out=tmp_path / "o", normalize=mode)
    assert options.result_options()["normalize"] == mode
    backend = Recorder()
    records = process_chunk(jobs, backend, options, {"model": "recorder"})
    assert [r.get("error") for r in records] == [None, None]
    for raw, seen in zip((raw16, raw8), backend.seen):
        assert seen.dtype == np.float32
        assert np.array_equal(seen, preprocess(to_grayscale(raw), raw.dtype, mode))
    if mode == "sam8":
        assert np.array_equal(to_rgb8(backend.seen[1])[..., 0], raw8)
    if mode == "none":
        assert np.array_equal(backend.seen[0], raw16.astype(np.float32) / np.float32(65536))


# -- SAM: segment == SamPredictor on the raw 8-bit image ---------------------------------------


@pytest.fixture(scope="module")
def predictor(sensitive_sam):
    """segment-anything's own predictor on the same weights file."""
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    sam = _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                     encoder_global_attn_indexes=[1])
    sam.load_state_dict(torch.load(sensitive_sam, weights_only=True))
    return SamPredictor(sam.eval())


def _predictor_prob(predictor, gray8: np.ndarray) -> np.ndarray:
    assert gray8.dtype == np.uint8
    predictor.set_image(np.repeat(gray8[..., None], 3, axis=2))
    masks, _scores, _low_res = predictor.predict(multimask_output=False, return_logits=True)
    return expit(masks[0].astype(np.float32))


def _masks_agree(mask: np.ndarray, reference: np.ndarray) -> bool:
    """``mask == reference >= 0.5`` wherever the reference is clear of the threshold by more
    than the maps may differ: a pixel within PROB_TOLERANCE of 0.5 may fall either side (the
    fused encoder sums in another order: 1e-6 apart in fp32)."""
    clear = np.abs(reference - 0.5) >= PROB_TOLERANCE
    return bool(np.array_equal(mask[clear], reference[clear] >= 0.5)) and int((~clear).sum()) < 0.001 * mask.size


def _segment(cli, image: Path, out: Path, *args: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    # fp32: these compare against the libraries' own fp32 forward (--precision auto may pick bf16).
    run = cli("segment", image, "--device", "cpu", "--precision", "fp32", "--save-prob", "--out", out, *args)
    assert run.code == 0, run.stderr
    [record] = run.records
    return record, tifffile.imread(record["mask"]) > 0, tifffile.imread(record["prob"])


def test_sam_sees_the_raw_8_bit_image_as_sam_predictor_does(cli, sensitive_sam, image8, predictor, tmp_path):
    raw = tifffile.imread(image8)
    expected = _predictor_prob(predictor, raw)
    assert 0.1 < (expected >= 0.5).mean() < 0.9  # sensitive: a real map, not a constant

    record, mask, prob = _segment(cli, image8, tmp_path / "o", "--model", "sam", "-w", sensitive_sam)
    assert record["params"]["normalize"] == "sam8"  # --normalize auto = SPEC.preprocess
    delta = float(np.abs(prob - expected).max())
    assert delta < PROB_TOLERANCE, delta
    assert _masks_agree(mask, expected)

    # What segment gave SAM before: the 8-bit image stretched again. Clearly another map.
    stretched = np.round(normalize(raw.astype(np.float32)) * 255).astype(np.uint8)
    before = _predictor_prob(predictor, stretched)
    assert float(np.abs(before - expected).max()) > 0.5
    assert ((before >= 0.5) != (expected >= 0.5)).mean() > 0.05
    # ... and --normalize percentile still gives it, for checkpoints trained that way.
    _, old_mask, old_prob = _segment(cli, image8, tmp_path / "p", "--model", "sam", "-w", sensitive_sam,
                                     "--normalize", "percentile")
    assert float(np.abs(old_prob - before).max()) < PROB_TOLERANCE
    assert _masks_agree(old_mask, before)


def test_sam_stretches_a_16_bit_image_to_8_bits_once(cli, sensitive_sam, predictor, tmp_path):
    raw = tifffile.imread(IMAGE16)
    assert raw.dtype == np.uint16
    eight = np.round(normalize(to_grayscale(raw)) * 255).astype(np.uint8)
    expected = _predictor_prob(predictor, eight)
    _, mask, prob = _segment(cli, IMAGE16, tmp_path / "o", "--model", "sam", "-w", sensitive_sam)
    assert float(np.abs(prob - expected).max()) < PROB_TOLERANCE
    assert _masks_agree(mask, expected)


# -- Cellpose: segment == CellposeModel.eval on the raw 16-bit image ---------------------------------


@pytest.fixture(scope="module")
def sensitive_cellpose(tmp_path_factory) -> Path:
    """A random cellpose 3 CPnet saved as a user's checkpoint is, its output conv scaled 300x
    and centred: cell-probability logits spread +-2.4 around 0 and flows vary by pixel, so
    cellpose finds dozens of cells and a different input shows in the maps."""
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(0)
    net = CPnet([2, 32, 64, 128, 256], 3, 3, mkldnn=False, max_pool=True, diam_mean=30.0)
    with torch.no_grad():
        conv = net.output[2]
        conv.weight.mul_(300)
        conv.bias.mul_(300)
        conv.bias.add_(torch.tensor([51.0, -30.0, 15.0]))  # means of the flows and logits, removed
    path = tmp_path_factory.mktemp("cellpose") / "sensitive_cp3.pth"
    torch.save(net.state_dict(), path)
    return path


def test_cellpose_sees_the_raw_image_as_cellpose_model_eval_does(cli, sensitive_cellpose, tmp_path):
    from cellpose import models

    raw = tifffile.imread(IMAGE16)[CELLPOSE_CROP]
    assert raw.dtype == np.uint16
    image = tmp_path / "crop16.tif"
    tifffile.imwrite(image, raw)
    reference = models.CellposeModel(pretrained_model=str(sensitive_cellpose), mkldnn=False,
                                     device=torch.device("cpu"))

    def cellpose_eval(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # cellpose builds labels with torch.sparse and would warn about invariant checks
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            labels, flows, _styles = reference.eval(
                x, channels=[0, 0], diameter=DIAMETER, flow_threshold=FLOW_THRESHOLD,
                cellprob_threshold=CELLPROB_THRESHOLD)
        return labels, expit(np.asarray(flows[2], dtype=np.float32))

    expected_labels, expected_prob = cellpose_eval(raw)
    expected_mask = expected_labels > 0
    assert expected_labels.max() >= 20 and 0.2 < (expected_prob >= 0.5).mean() < 0.8  # sensitive

    record, mask, prob = _segment(
        cli, image, tmp_path / "o", "--model", "cellpose", "-w", sensitive_cellpose,
        "--diameter", DIAMETER, "--flow-threshold", FLOW_THRESHOLD,
        "--cellprob-threshold", CELLPROB_THRESHOLD)
    assert record["params"]["normalize"] == "none"  # --normalize auto = SPEC.preprocess
    assert record["params"]["diameter"] == DIAMETER
    assert record["instances"] == expected_labels.max()
    delta = float(np.abs(prob - expected_prob).max())
    assert delta < PROB_TOLERANCE, delta
    assert np.array_equal(mask, expected_mask)

    # What segment gave cellpose before: the image clipped at 0.5/99.5 percentiles, which
    # cellpose then stretched at 1/99: the clipped pixels reach the network changed.
    before_labels, before_prob = cellpose_eval(normalize(to_grayscale(raw)))
    assert float(np.abs(before_prob - expected_prob).max()) > 5 * PROB_TOLERANCE
    assert ((before_labels > 0) != expected_mask).sum() > 50


def test_load_pairs_preprocesses_as_segment(tmp_path):
    from monolayer.training.data import load_pairs

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    raw = tifffile.imread(IMAGE16)[:64, :80]
    tifffile.imwrite(folder / "images" / "a.tif", raw)
    tifffile.imwrite(folder / "masks" / "a.tif", tifffile.imread(EXAMPLES / "masks" / "set30.tif")[:64, :80])
    loaded = load_image(folder / "images" / "a.tif")
    for mode in ("percentile", "none", "sam8"):
        [pair] = load_pairs(folder, None, preprocess=mode)
        assert np.array_equal(pair.image, preprocess(to_grayscale(loaded.array), raw.dtype, mode))
    [default] = load_pairs(folder, None)
    assert np.array_equal(default.image, normalize(to_grayscale(raw)))
