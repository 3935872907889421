"""U-Net backend: architecture read from the checkpoint, exact-shape probability maps, safe loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monolayer.backends._torch import RuntimeOptions
from monolayer.backends.unet import UNet, UNetBackend
from monolayer.errors import DataError
from monolayer.io.images import load_image, normalize, to_grayscale

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "usiigaci" / "images" / "set30.tif"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A real phase-contrast image, 1022 high x 1024 wide (the height is not a multiple of 16)."""
    return normalize(to_grayscale(load_image(EXAMPLE).array))


def save_unet(path: Path, seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    model = UNet(**kwargs)
    # Non-trivial BatchNorm statistics, so that eval mode matters.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_unet(tmp_path_factory.mktemp("unet") / "tiny.pt", base_channels=4)


def backend(path: Path, **kwargs) -> UNetBackend:
    batch_size = kwargs.pop("batch_size", 1)
    precision = kwargs.pop("precision", "fp32")
    return UNetBackend(runtime=RuntimeOptions(weights=str(path), device="cpu", batch_size=batch_size,
                                              precision=precision), **kwargs)


def test_full_image_probability_map_has_the_image_shape(tiny: Path, image: np.ndarray) -> None:
    assert image.shape == (1022, 1024)
    b = backend(tiny, threshold=0.5)
    p = b.predict(image)
    assert p.mask.shape == p.score.shape == image.shape
    assert p.mask.dtype == bool
    assert p.score.dtype == np.float32
    assert 0.0 <= p.score.min() and p.score.max() <= 1.0
    np.testing.assert_array_equal(p.mask, p.score >= 0.5)
    assert b.score_kind == "probability"


def test_probability_is_the_plain_sigmoid_of_the_cropped_logits(tiny: Path, image: np.ndarray) -> None:
    """No per-image min-max stretching; padding cut off before the sigmoid."""
    crop = image[:37, :50]
    b = backend(tiny, threshold=0.3)
    p = b.predict(crop)
    model = UNet(base_channels=4)
    model.load_state_dict(torch.load(tiny, weights_only=True))
    model.eval()
    x = torch.from_numpy(crop.copy())[None, None]
    with torch.inference_mode():
        x = F.pad(x, (0, 64 - 50, 0, 48 - 37), mode="reflect")
        expected = torch.sigmoid(model(x)[0, 0, :37, :50]).numpy()
    np.testing.assert_allclose(p.score, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(p.mask, p.score >= 0.3)


def test_threshold_is_absolute(tiny: Path, image: np.ndarray) -> None:
    crop = image[:64, :80]
    low, high = backend(tiny, threshold=0.2).predict(crop), backend(tiny, threshold=0.9).predict(crop)
    np.testing.assert_array_equal(low.score, high.score)
    np.testing.assert_array_equal(low.mask, low.score >= 0.2)
    np.testing.assert_array_equal(high.mask, high.score >= 0.9)
    # An empty (flat) field is not stretched to [0, 1]: its probabilities stay where the model puts them.
    flat = backend(tiny).predict(np.zeros((48, 48), np.float32)).score
    assert float(flat.max() - flat.min()) < 0.5


def test_same_weights_give_identical_output(tiny: Path, image: np.ndarray) -> None:
    a, b = backend(tiny).predict(image), backend(tiny).predict(image)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_batch_equals_one_by_one(tiny: Path, image: np.ndarray) -> None:
    crops = [image[:200, :300], image[300:500, 400:700], image[600:650, :90]]
    b = backend(tiny, batch_size=4)
    batched = b.predict_batch(crops)
    assert len(batched) == 3
    for crop, got in zip(crops, batched):
        single = b.predict(crop)
        assert got.score.shape == crop.shape
        np.testing.assert_allclose(got.score, single.score, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.mask, got.score >= 0.5)


@pytest.mark.parametrize(("bilinear", "channels"), [(True, 1), (False, 1), (True, 3)])
def test_architecture_is_read_from_the_checkpoint(tmp_path: Path, bilinear: bool, channels: int) -> None:
    path = save_unet(tmp_path / "m.pt", base_channels=4, bilinear=bilinear, n_channels=channels)
    b = backend(path, threshold=0.4)
    assert (b.config.base_channels, b.config.bilinear, b.config.n_channels) == (4, bilinear, channels)
    params = b.describe()["params"]
    assert params["threshold"] == 0.4
    assert params["base_channels"] == 4
    assert params["bilinear"] is bilinear
    assert b.describe()["weights_sha256"] == b.weights.sha256
    p = b.predict(np.linspace(0, 1, 30 * 45, dtype=np.float32).reshape(30, 45))
    assert p.score.shape == (30, 45)


def test_milesial_checkpoint_extras_load(tmp_path: Path) -> None:
    """milesial's train.py saves ``mask_values`` beside the weights; DataParallel adds ``module.``."""
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in UNet(base_channels=4).state_dict().items()}
    state["mask_values"] = [0, 1]
    torch.save(state, tmp_path / "m.pth")
    assert backend(tmp_path / "m.pth").config.base_channels == 4


def test_full_size_parameter_count() -> None:
    """milesial's README: 17.3 M (bilinear, 3 input channels) and 31.0 M (transposed)."""
    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert count(UNet()) == 17_261_825  # 1 grayscale input channel, as used here
    assert count(UNet(n_channels=3)) == 17_262_977
    assert count(UNet(bilinear=False)) == 31_036_481


def test_bf16_autocast_returns_float32_probabilities(tiny: Path, image: np.ndarray) -> None:
    p = backend(tiny, precision="bf16").predict(image[:40, :70])
    assert p.score.dtype == np.float32 and p.score.shape == (40, 70)
    assert 0.0 <= p.score.min() and p.score.max() <= 1.0


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Exploit()}, path)
    with pytest.raises(DataError, match="refused"):
        backend(path)
    assert "pwned" not in capfd.readouterr().out


def test_wrong_shapes_are_a_data_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = UNet(base_channels=4).state_dict()
    state["up2.conv.double_conv.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="do not fit"):
        backend(tmp_path / "bad.pt")


def test_not_a_unet_is_a_data_error(tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(8, 1, 3, 3)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a U-Net"):
        backend(tmp_path / "other.pt")
    torch.manual_seed(0)
    torch.save(UNet(base_channels=4, n_classes=2).state_dict(), tmp_path / "two.pt")
    with pytest.raises(DataError, match="2 output channels"):
        backend(tmp_path / "two.pt")
