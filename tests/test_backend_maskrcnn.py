"""Mask R-CNN backend: torchvision R50-FPN, one class, original-size outputs, safe strict loading.

A randomly initialised model is slow on CPU: every forward pass runs at
torchvision's internal size (shorter side 800), and random weights keep
hundreds of instances at score 0.5, each through the mask head. So the module
shares one checkpoint, runs the default thresholds once on the full image, and
checks determinism and batching with a stricter score threshold (fewer instances).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from monolayer.backends._torch import RuntimeOptions
from monolayer.backends.maskrcnn import DETECTIONS_PER_IMAGE, MaskRCNNBackend
from monolayer.errors import DataError
from monolayer.io.images import load_image, normalize, to_grayscale

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "usiigaci" / "images" / "set30.tif"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A real phase-contrast image, 1022 high x 1024 wide."""
    return normalize(to_grayscale(load_image(EXAMPLE).array))


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2).state_dict()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("maskrcnn") / "random.pt"
    torch.save(state, path)
    return path


def make(path: Path, **kwargs) -> MaskRCNNBackend:
    batch_size = kwargs.pop("batch_size", 1)
    return MaskRCNNBackend(runtime=RuntimeOptions(weights=str(path), device="cpu", batch_size=batch_size),
                           **kwargs)


@pytest.fixture(scope="module")
def backend(weights: Path) -> MaskRCNNBackend:
    return make(weights)


@pytest.fixture(scope="module")
def full(backend: MaskRCNNBackend, image: np.ndarray):
    return backend.predict(image)


def test_full_image_outputs_have_the_original_shape(full, image: np.ndarray) -> None:
    assert image.shape == (1022, 1024)
    assert full.mask.shape == full.score.shape == image.shape
    assert full.mask.dtype == bool
    assert full.score.dtype == np.float32
    assert 0.0 <= full.score.min() and full.score.max() <= 1.0
    # The score map is the per-pixel max of kept instances' soft masks: the union rule in one line.
    np.testing.assert_array_equal(full.mask, full.score >= 0.5)


def test_extras_carry_instance_count_and_mean_confidence(full) -> None:
    assert set(full.extras) == {"instances", "mean_confidence"}
    n = full.extras["instances"]
    assert isinstance(n, int) and 0 <= n <= DETECTIONS_PER_IMAGE
    mean = full.extras["mean_confidence"]
    if n:
        assert isinstance(mean, float) and 0.5 <= mean <= 1.0
    else:
        assert mean is None and not full.mask.any()


STRICT = 0.8
"""Score threshold for the repeated runs: keeps tens of random instances, not hundreds."""


@pytest.fixture(scope="module")
def strips(image: np.ndarray) -> list[np.ndarray]:
    """Two equal-shape wide strips: cheaper than the full image, since torchvision caps the
    longer side at 1333 (180 x 1024 runs at 234 x 1333)."""
    return [image[:180, :], image[500:680, :]]


@pytest.fixture(scope="module")
def strict(weights: Path) -> MaskRCNNBackend:
    return make(weights, score_threshold=STRICT)


@pytest.fixture(scope="module")
def singles(strict: MaskRCNNBackend, strips: list[np.ndarray]):
    return [strict.predict(strip) for strip in strips]


def test_same_weights_give_identical_output(weights: Path, singles, strips) -> None:
    again = make(weights, score_threshold=STRICT).predict(strips[0])
    assert singles[0].extras["instances"] > 0
    np.testing.assert_array_equal(again.score, singles[0].score)
    np.testing.assert_array_equal(again.mask, singles[0].mask)
    assert again.extras == singles[0].extras


def test_batch_equals_one_by_one(weights: Path, singles, strips) -> None:
    batched = make(weights, score_threshold=STRICT, batch_size=2).predict_batch(strips)
    assert len(batched) == 2
    for strip, got, single in zip(strips, batched, singles):
        assert got.score.shape == single.score.shape == strip.shape
        assert got.extras == single.extras
        np.testing.assert_allclose(got.score, single.score, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.mask, got.score >= 0.5)


def test_no_instance_above_the_score_threshold(weights: Path, strips) -> None:
    p = make(weights, score_threshold=1.0).predict(strips[0])
    assert p.extras == {"instances": 0, "mean_confidence": None}
    assert not p.mask.any() and p.score.shape == strips[0].shape and float(p.score.max()) == 0.0


def test_describe_names_thresholds(backend: MaskRCNNBackend) -> None:
    record = backend.describe()
    assert record["model"] == "maskrcnn"
    assert record["params"]["threshold"] == 0.5
    assert record["params"]["score_threshold"] == 0.5
    assert record["params"]["detections_per_image"] == DETECTIONS_PER_IMAGE
    assert record["weights_sha256"] == backend.weights.sha256


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save(_Exploit(), path)
    with pytest.raises(DataError, match="refused"):
        make(path)
    assert "pwned" not in capfd.readouterr().out


def test_wrong_shapes_are_a_data_error(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    bad = dict(state)
    bad["roi_heads.mask_head.0.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="do not fit"):
        make(tmp_path / "bad.pt")


def test_other_class_count_and_missing_keys_are_data_errors(tmp_path: Path,
                                                           state: dict[str, torch.Tensor]) -> None:
    three = dict(state)
    three["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 1024)
    torch.save(three, tmp_path / "three.pt")
    with pytest.raises(DataError, match="2 foreground classes"):
        make(tmp_path / "three.pt")
    partial = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(DataError, match="do not fit"):
        make(tmp_path / "partial.pt")
