"""U-Net and Mask R-CNN through `monolayer segment`, loading a saved random model as a user's checkpoint."""

import re

import numpy as np
import pytest
import tifffile

import torch
import torchvision  # noqa: F401  (needed by the backend under test)


def without_timing(stdout: str) -> str:
    """The raw JSON Lines bytes with only the timing field cut out."""
    assert stdout.count('"seconds":') == len(stdout.splitlines())
    return re.sub(r',"seconds":[0-9.e+-]+', "", stdout)


@pytest.fixture(scope="module")
def unet_weights(tmp_path_factory):
    from monolayer.backends.unet import UNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "unet.pt"
    torch.save(UNet(base_channels=4).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def maskrcnn_weights(tmp_path_factory):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "maskrcnn.pt"
    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2).state_dict(), path)
    return path


def check(run, image_shape):
    assert run.code == 0, run.stderr
    [r] = run.records
    mask, prob = tifffile.imread(r["mask"]), tifffile.imread(r["prob"])
    assert mask.shape == prob.shape == image_shape
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
    assert r["confluence"] == (mask > 0).mean()
    assert len(r["weights_sha256"]) == 64
    return r, mask, prob


def test_unet(cli, examples, unet_weights, tmp_path):
    image = examples / "images" / "set30.tif"
    args = ("segment", image, "-m", "unet", "-w", unet_weights, "--device", "cpu", "--out", tmp_path / "o",
            "--save-prob")
    first = cli(*args)
    r, mask, prob = check(first, (1022, 1024))
    assert np.array_equal(mask > 0, prob >= 0.5)
    assert r["params"]["base_channels"] == 4
    assert without_timing(cli(*args).stdout) == without_timing(first.stdout)


def test_maskrcnn(cli, examples, maskrcnn_weights, tmp_path):
    image = examples / "images" / "set30.tif"
    args = ("segment", image, "-m", "maskrcnn", "-w", maskrcnn_weights, "--device", "cpu",
            "--score-threshold", "0.8", "--out", tmp_path / "o", "--save-prob")
    first = cli(*args)
    r, mask, prob = check(first, (1022, 1024))
    assert isinstance(r["instances"], int) and "mean_confidence" in r
    assert without_timing(cli(*args).stdout) == without_timing(first.stdout)


def test_weights_of_the_wrong_model(cli, examples, unet_weights, tmp_path):
    run = cli("segment", examples / "images" / "set30.tif", "-m", "maskrcnn", "-w", unet_weights,
              "--out", tmp_path / "o")
    assert run.code == 65 and run.stdout == ""
