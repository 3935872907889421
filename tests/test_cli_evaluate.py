"""evaluate through the CLI: identity matching, truth sources, checks, missing items."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import tifffile


@pytest.fixture
def truth_and_pred(cli, tmp_path, small_images):
    """Truth masks for the two small images and canny predictions for them."""
    truth = tmp_path / "truth"
    truth.mkdir()
    for name in ("a", "b"):
        img = tifffile.imread(small_images / f"{name}.tif")
        tifffile.imwrite(truth / f"{name}.tif", (np.abs(img.astype(int) - 120) > 20).astype(np.uint8))
    pred = cli("segment", small_images, "--method", "canny", "--out", tmp_path / "pred")
    assert pred.code == 0, pred.stderr
    (tmp_path / "pred.jsonl").write_text(pred.stdout)
    return truth, tmp_path / "pred.jsonl"


def test_shuffled_predictions_give_the_same_evaluation(cli, truth_and_pred, tmp_path):
    truth, pred = truth_and_pred
    first = cli("evaluate", pred, "--truth", truth)
    assert first.code == 0, first.stderr
    lines = pred.read_text().splitlines()
    random.Random(3).shuffle(lines)
    lines.reverse()
    (tmp_path / "shuffled.jsonl").write_text("\n".join(lines) + "\n")
    second = cli("evaluate", tmp_path / "shuffled.jsonl", "--truth", truth)
    by_image = lambda run: {r["image"]: r for r in run.records}
    assert by_image(first).keys() == by_image(second).keys()
    for image, r in by_image(first).items():
        s = by_image(second)[image]
        assert r["iou"] == s["iou"] and r["truth"] == s["truth"]
        assert Path(r["truth"]).stem == Path(image).stem
        assert {"iou", "dice", "confluence_pred", "confluence_true", "abs_confluence_error"} <= set(r)
        assert r["abs_confluence_error"] == pytest.approx(abs(r["confluence_pred"] - r["confluence_true"]))


def test_values_are_computed_from_the_masks(cli, truth_and_pred):
    truth, pred = truth_and_pred
    for r in cli("evaluate", pred, "--truth", truth).records:
        p = tifffile.imread(r["mask"]) > 0
        t = tifffile.imread(r["truth"]) > 0
        assert r["iou"] == pytest.approx((p & t).sum() / (p | t).sum())
        assert r["confluence_true"] == t.mean()


def test_checks_and_summary_file(cli, truth_and_pred, tmp_path):
    truth, pred = truth_and_pred
    ok = cli("evaluate", pred, "--truth", truth, "--summary", tmp_path / "s.json", "--fail-under", "iou=0.0")
    assert ok.code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["iou"]["n"] == 2 and {"mean", "std", "median", "iqr"} <= set(summary["iou"])
    bad = cli("evaluate", pred, "--truth", truth, "--fail-over", "0.0")
    assert bad.code == 1 and "check failed: mean abs_confluence_error" in bad.stderr
    assert len(bad.records) == 2  # the records are still written
    assert cli("evaluate", pred, "--truth", truth, "--fail-under", "bogus=1").code == 2


def test_unmatched_images_are_errors(cli, truth_and_pred, tmp_path):
    truth, pred = truth_and_pred
    (truth / "extra.tif").write_bytes((truth / "a.tif").read_bytes())
    run = cli("evaluate", pred, "--truth", truth)
    assert run.code == 1
    assert "no prediction for this truth image" in run.records[-1]["error"]
    assert cli("evaluate", pred, "--truth", truth, "--allow-missing").code == 0


def test_coco_truth_and_truth_jsonl(cli, examples, tmp_path):
    pred = cli("segment", examples / "images" / "set30.tif", "--method", "canny", "--out", tmp_path / "p")
    (tmp_path / "pred.jsonl").write_text(pred.stdout)
    by_coco = cli("evaluate", tmp_path / "pred.jsonl", "--truth", examples / "annotations.json",
                  "--allow-missing")
    assert by_coco.code == 0, by_coco.stderr
    truth = cli("coco2mask", examples / "annotations.json", "--images", examples / "images", "--out", tmp_path / "t")
    (tmp_path / "truth.jsonl").write_text(truth.stdout)
    by_jsonl = cli("evaluate", tmp_path / "pred.jsonl", "--truth", tmp_path / "truth.jsonl", "--allow-missing")
    [a], [b] = by_coco.records, by_jsonl.records
    assert b["matched_by"] == "sha256"
    assert a["iou"] == b["iou"] and a["confluence_true"] == b["confluence_true"]


def test_failed_prediction_and_shape_mismatch(cli, tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.ones((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "p.tif", np.ones((4, 5), np.uint8))
    records = [{"image": "x/t.tif", "mask": str(tmp_path / "p.tif")}, {"image": "y.tif", "error": "boom"}]
    (tmp_path / "pred.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "t.tif", np.ones((4, 4), np.uint8))
    run = cli("evaluate", tmp_path / "pred.jsonl", "--truth", tmp_path / "truth")
    assert run.code == 65  # nothing evaluated, and every failure was bad data
    assert "5x4 px, truth is 4x4" in run.records[0]["error"]
    assert "prediction failed: boom" in run.records[1]["error"]


def test_bad_jsonl_names_file_and_line(cli, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"image": "a"}\n{oops\n')
    (tmp_path / "t").mkdir()
    tifffile.imwrite(tmp_path / "t" / "a.tif", np.ones((2, 2), np.uint8))
    run = cli("evaluate", tmp_path / "p.jsonl", "--truth", tmp_path / "t")
    # Each bad line is an error record for that line; the batch goes on and fails at the end.
    assert run.code == 1 and f"{tmp_path / 'p.jsonl'}:2: not valid JSON" in run.stderr
    assert f"{tmp_path / 'p.jsonl'}:1: the record has no 'mask' field" in run.stderr
    assert [r.get("exit_code") for r in run.records] == [65, 65, 66]


def _truth_jsonl(path, records):
    path.write_text("".join(json.dumps({"schema": "monolayer.truth/1", **r}) + "\n" for r in records))
    return path


def test_truth_that_is_of_another_image_is_never_matched(cli, truth_and_pred, tmp_path):
    """A record whose checksum or folder differs from the prediction's image is an error for that
    image, never a match by name; two sources disagreeing on one image are refused."""
    truth, pred = truth_and_pred
    preds = {Path(r["image"]).stem: r for r in map(json.loads, pred.read_text().splitlines())}
    a, b = preds["a"], preds["b"]
    bad = _truth_jsonl(tmp_path / "bad.jsonl", [
        # a's own path, but a checksum of another file: the image changed
        {"image": a["image"], "image_sha256": "0" * 64, "mask": str(truth / "a.tif")},
        # b's name in another folder
        {"image": "elsewhere/b.tif", "mask": str(truth / "b.tif")}])
    run = cli("evaluate", pred, "--truth", bad)
    assert run.code != 0
    errors = {stem: " | ".join(r["error"] for r in run.records if "error" in r and r["image"] == p["image"])
              for stem, p in (("a", a), ("b", b))}
    assert "checksum" in errors["a"] and "changed" in errors["a"], errors
    assert "elsewhere/b.tif" in errors["b"], errors
    assert not [r for r in run.records if "iou" in r]
    # One checksum, two masks from two sources: refused for that image, whichever comes first.
    one = _truth_jsonl(tmp_path / "one.jsonl", [{"image": "x.tif", "image_sha256": a["image_sha256"],
                                                 "mask": str(truth / "a.tif")}])
    two = _truth_jsonl(tmp_path / "two.jsonl", [{"image": "y.tif", "image_sha256": a["image_sha256"],
                                                 "mask": str(truth / "b.tif")}])
    for order in ((one, two), (two, one)):
        run = cli("evaluate", pred, "--truth", order[0], "--truth", order[1], "--allow-missing")
        [ra] = [r for r in run.records if r.get("image") == a["image"]]
        assert "cannot tell which" in ra["error"]
