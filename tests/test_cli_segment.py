"""segment through the CLI: records match masks, bad images never stop the batch."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import blob_truth

from monolayer.metrics import iou


def check_record_matches_mask(r):
    mask = tifffile.imread(r["mask"])
    assert mask.shape == (r["height"], r["width"])
    assert set(np.unique(mask)) <= {0, 1}
    assert r["confluence"] == pytest.approx((mask > 0).mean(), abs=0)
    return mask


@pytest.mark.parametrize("method", ["canny", "phase"])
def test_records_and_masks(cli, small_images, tmp_path, method):
    run = cli("segment", small_images, "--method", method, "--out", tmp_path / "out", "--save-prob")
    assert run.code == 0, run.stderr
    assert len(run.records) == 2
    for r in run.records:
        assert r["schema"] == "monolayer.segment/1" and r["model"] == "classical"
        assert r["method"] == method and isinstance(r["params"], dict)
        assert len(r["image_sha256"]) == 64 and r["version"]
        mask = check_record_matches_mask(r)
        centers = ((30, 40), (60, 90)) if r["image"].endswith("a.tif") else ((48, 64),)
        assert iou(mask > 0, blob_truth(centers=centers)) > 0.5  # found the cells
        if method == "phase":
            prob = tifffile.imread(r["prob"])
            assert prob.dtype == np.float32 and prob.shape == mask.shape
        else:
            assert r["prob"] is None
    if method == "canny":
        assert "no score map" in run.stderr


def test_bad_inputs_do_not_stop_the_batch(cli, small_images, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = tifffile.imread(small_images / "a.tif")
    tifffile.imwrite(bad / "0good.tif", good)
    data = (small_images / "a.tif").read_bytes()
    (bad / "1truncated.tif").write_bytes(data[: len(data) // 3])
    (bad / "2empty.tif").write_bytes(b"")
    (bad / "3text.tif").write_text("not an image")
    run = cli("segment", bad, str(tmp_path / "missing.tif"), "--out", tmp_path / "out")
    assert run.code == 1
    records = run.records
    assert len(records) == 5
    assert "error" not in records[0] and Path(records[0]["mask"]).exists()
    assert all("error" in r for r in records[1:])
    assert "empty file" in records[2]["error"] and "no such file" in records[4]["error"]
    error_lines = [l for l in run.stderr.splitlines() if l.startswith("monolayer: error:")]
    assert len(error_lines) == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".monolayer") == ["0good.mask.tif"]


def test_only_a_missing_input_exits_66(cli, tmp_path):
    run = cli("segment", tmp_path / "nothing.tif", "--out", tmp_path / "o")
    assert run.code == 66


def test_stdin_jsonl_and_plain_paths(cli, small_images, tmp_path):
    lines = json.dumps({"image": str(small_images / "a.tif"), "other": 1}) + "\n" + str(small_images / "b.tif") + "\n"
    run = cli("segment", "-", "--out", tmp_path / "o", input=lines)
    assert run.code == 0, run.stderr
    assert [Path(r["image"]).name for r in run.records] == ["a.tif", "b.tif"]


def test_same_stem_in_two_folders_gets_two_masks(cli, small_images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "a.tif", tifffile.imread(small_images / "b.tif"))
    run = cli("segment", small_images / "a.tif", other / "a.tif", "--out", tmp_path / "o")
    masks = [r["mask"] for r in run.records]
    assert len(set(masks)) == 2


def test_rgb_and_16bit_inputs(cli, small_images, tmp_path):
    g = tifffile.imread(small_images / "a.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([g, g, g], -1), photometric="rgb")
    tifffile.imwrite(tmp_path / "u16.tif", g.astype(np.uint16) * 257)
    run = cli("segment", tmp_path / "rgb.tif", tmp_path / "u16.tif", small_images / "a.tif",
              "--out", tmp_path / "o")
    assert run.code == 0, run.stderr
    confluences = [r["confluence"] for r in run.records]
    assert confluences[0] == confluences[2] and abs(confluences[1] - confluences[2]) < 0.01


def test_unknown_and_unavailable_models(cli, small_images, tmp_path):
    assert cli("segment", small_images, "--out", tmp_path, "--model", "nope").code == 2
    run = cli("segment", small_images, "--out", tmp_path / "o", "--model", "sam")
    assert run.code == 69 and "needs --weights" in run.stderr and run.stdout == ""
    run = cli("segment", small_images, "--out", tmp_path / "o", "--model", "sam", "--weights", "sam_vit_b")
    assert run.code == 69 and "models fetch sam_vit_b" in run.stderr
    run = cli("segment", small_images, "--out", tmp_path / "o", "--mode", "auto")
    assert run.code == 2 and "--mode does not apply to --model classical" in run.stderr


def test_blank_image_has_zero_confluence(cli, tmp_path):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "flat.tif", np.full((64, 64), 100, np.uint8))
    tifffile.imwrite(tmp_path / "noise.tif", (1000 + rng.normal(0, 3, (64, 64))).astype(np.uint16))
    run = cli("segment", tmp_path / "flat.tif", tmp_path / "noise.tif", "--out", tmp_path / "o")
    assert run.code == 0, run.stderr
    assert [r["confluence"] for r in run.records] == [0.0, 0.0]


def test_output_folder_inside_the_input_folder_is_not_read_back(cli, small_images):
    out = small_images / "masks"
    first = cli("segment", small_images, "--out", out, "-r")
    second = cli("segment", small_images, "--out", out, "-r")
    assert first.code == second.code == 0
    assert len(first.records) == len(second.records) == 2
