"""train --model sam|cellpose|maskrcnn: checkpoints that segment loads, what is trained, and from folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from monolayer.io.truth import truth_records
from monolayer.training.data import load_pairs, read_labels


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sam_trains_the_mask_decoder_only_and_segment_loads_it(cli, examples, tiny_sam, tmp_path):
    out = tmp_path / "sam_ft.pt"
    run = cli("train", "--model", "sam", "--weights", tiny_sam, "--train", examples, "--val", examples,
              "--epochs", "3", "--lr", "1e-3", "--resize", "128", "--device", "cpu", "--out", out, "-q")
    assert run.code == 0, run.stderr
    assert [r["epoch"] for r in run.records] == [1, 2, 3]
    losses = [r["loss"] for r in run.records]
    assert losses[-1] < losses[0]  # the decoder learns on these three images
    before, after = _state(tiny_sam), _state(out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mask_decoder.") for k in changed)
    seg = cli("segment", examples / "images" / "set30.tif", "-m", "sam", "-w", out, "--device", "cpu",
              "--out", tmp_path / "p")
    assert seg.code == 0, seg.stderr
    import hashlib

    assert seg.records[0]["weights_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert seg.records[0]["params"]["variant"] == "custom-64x2"


def test_sam_loss_is_focal_and_dice_20_to_1():
    from torchvision.ops import sigmoid_focal_loss

    from monolayer.training.common import dice_loss
    from monolayer.training.sam import sam_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    focal = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="mean")
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert float(sam_loss(logits, target)) == pytest.approx(float(20 * focal + dice), rel=1e-6)
    assert float(dice_loss(logits[None], target[None])) == pytest.approx(float(dice), rel=1e-6)


def test_cellpose_trains_from_random_init_and_segment_loads_it(cli, examples, tmp_path):
    out = tmp_path / "cp.pt"
    run = cli("train", "--model", "cellpose", "--train", examples, "--epochs", "2", "--resize", "256",
              "--batch-size", "3", "--patch", "128", "--device", "cpu", "--out", out, "-q")
    assert run.code == 0, run.stderr
    assert [r["epoch"] for r in run.records] == [1, 2]
    state = _state(out)
    labels = [read_labels(Path(r["mask"])) for r in truth_records(examples)]
    # diam_labels is the training labels' mean diameter at the training scale (1024 -> 256 px: / 4)
    from cellpose import utils

    expected = np.mean([max(utils.diameters(p.labels)[0], 5.0) for p in load_pairs(examples, 256)])
    assert float(state["diam_labels"][0]) == pytest.approx(expected, rel=1e-5)
    assert float(state["diam_labels"][0]) < np.mean([utils.diameters(l)[0] for l in labels]) / 2
    seg = cli("segment", examples / "images" / "set20.tif", "-m", "cellpose", "-w", out, "--resize", "256",
              "--device", "cpu", "--out", tmp_path / "p")
    assert seg.code == 0, seg.stderr
    assert seg.records[0]["params"]["diameter"] == pytest.approx(expected, rel=1e-5)


def test_cellpose_refuses_labels_without_cells(cli, tmp_path):
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    tifffile.imwrite(data / "images" / "a.tif", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    tifffile.imwrite(data / "masks" / "a.tif", np.zeros((64, 64), np.uint16))
    run = cli("train", "--model", "cellpose", "--train", data, "--epochs", "1", "--device", "cpu",
              "--out", tmp_path / "cp.pt")
    assert run.code == 65 and "labelled cells" in run.stderr
    assert not (tmp_path / "cp.pt").exists()


def test_maskrcnn_targets_cover_each_instance():
    from monolayer.training.maskrcnn import targets_from_labels

    labels = np.zeros((10, 12), np.int32)
    labels[2:5, 3:7] = 4
    labels[8, 11] = 9  # a one-pixel cell still gets a box of positive size
    t = targets_from_labels(labels, torch.device("cpu"))
    assert t["boxes"].tolist() == [[3.0, 2.0, 7.0, 5.0], [11.0, 8.0, 12.0, 9.0]]
    assert t["labels"].tolist() == [1, 1]
    assert t["masks"].shape == (2, 10, 12) and int(t["masks"][0].sum()) == 12
    empty = targets_from_labels(np.zeros((4, 4), np.int32), torch.device("cpu"))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 4, 4)


@pytest.mark.slow
def test_maskrcnn_trains_and_segment_loads_it(cli, examples, tmp_path):
    out = tmp_path / "mr.pt"
    run = cli("train", "--model", "maskrcnn", "--train", examples / "annotations.json", "--epochs", "1",
              "--device", "cpu", "--out", out, "-q")
    assert run.code == 65  # a COCO file is not truth records: coco2mask first
    truth = tmp_path / "set"
    (truth / "images").mkdir(parents=True)
    (truth / "masks").mkdir()
    for name in ("set20.tif", "set26.tif"):
        image = tifffile.imread(examples / "images" / name)[:256, :256]
        tifffile.imwrite(truth / "images" / name, image)
        tifffile.imwrite(truth / "masks" / name, tifffile.imread(examples / "masks" / name)[:256, :256])
    run = cli("train", "--model", "maskrcnn", "--train", truth, "--val", truth, "--epochs", "1",
              "--device", "cpu", "--out", out, "-q")
    assert run.code == 0, run.stderr
    assert {"loss", "val_iou"} <= set(run.records[0]) and np.isfinite(run.records[0]["loss"])
    seg = cli("segment", truth / "images", "-m", "maskrcnn", "-w", out, "--device", "cpu", "--out", tmp_path / "p")
    assert seg.code == 0, seg.stderr
    assert len(seg.records) == 2


def test_folder_training_set_matches_masks_by_stem(cli, examples, tmp_path):
    records = truth_records(examples)
    assert [Path(r["image"]).name for r in records] == ["set20.tif", "set26.tif", "set30.tif"]
    assert all(Path(r["mask"]).parent.name == "masks" and 0 < r["confluence"] < 1 for r in records)
    broken = tmp_path / "set"
    (broken / "images").mkdir(parents=True)
    (broken / "masks").mkdir()
    tifffile.imwrite(broken / "images" / "lonely.tif", np.zeros((8, 8), np.uint8))
    run = cli("train", "--model", "unet", "--train", broken, "--epochs", "1", "--out", tmp_path / "u.pt")
    assert run.code == 65 and "lonely.tif" in run.stderr
    flat = cli("train", "--model", "unet", "--train", examples / "images", "--epochs", "1", "--out", tmp_path / "u.pt")
    assert flat.code == 66 and "images/ and masks/" in flat.stderr


def test_binary_masks_become_connected_components(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6] = 255
    mask[10:15, 10:12] = 255
    tifffile.imwrite(tmp_path / "m.tif", mask)
    labels = read_labels(tmp_path / "m.tif")
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    instances = np.zeros((20, 20), np.uint16)
    instances[2:6, 2:6] = 7
    instances[2:6, 6:9] = 3  # touching cells keep their own labels
    tifffile.imwrite(tmp_path / "l.tif", instances)
    assert set(np.unique(read_labels(tmp_path / "l.tif"))) == {0, 3, 7}


@pytest.mark.parametrize("model", ["sam", "cellpose"])
def test_resumed_training_matches_an_uninterrupted_run(cli, examples, tiny_sam, tmp_path, model):
    """Stopping after epoch 2 and running again (the state file is what a kill leaves) gives
    the same epochs and losses as one run, for the trainers with their own randomness."""
    options = {"sam": ["--weights", tiny_sam, "--resize", "128", "--lr", "1e-3"],
               "cellpose": ["--resize", "128", "--patch", "64", "--batch-size", "3"]}[model]
    common = ["train", "--model", model, "--train", examples, "--device", "cpu", "-q", *options]
    whole = cli(*common, "--epochs", "3", "--out", tmp_path / "whole.pt")
    assert whole.code == 0, whole.stderr
    first = cli(*common, "--epochs", "2", "--out", tmp_path / "resumed.pt")
    assert first.code == 0, first.stderr
    resumed = cli(*common, "--epochs", "3", "--out", tmp_path / "resumed.pt")
    assert resumed.code == 0, resumed.stderr
    assert [r["epoch"] for r in resumed.records] == [1, 2, 3]
    assert [r["loss"] for r in resumed.records] == pytest.approx([r["loss"] for r in whole.records], rel=1e-5)
    a, b = _state(tmp_path / "whole.pt"), _state(tmp_path / "resumed.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)
