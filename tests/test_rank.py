"""entropy-rank: the entropy by hand, ordering, Mask R-CNN confidence, bad input."""

import json

import numpy as np
import pytest
import tifffile

from monolayer.commands.rank import mean_binary_entropy


def test_entropy_by_hand():
    p = np.array([0.5, 0.25, 0.0, 1.0])
    h025 = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))
    assert mean_binary_entropy(p) == pytest.approx((1.0 + h025) / 4)


def write_pred(tmp_path, name, prob):
    tifffile.imwrite(tmp_path / f"{name}.prob.tif", np.asarray(prob, np.float32))
    return {"image": f"{name}.tif", "mask": f"{name}.mask.tif", "prob": str(tmp_path / f"{name}.prob.tif"),
            "model": "unet"}


def test_most_uncertain_first_whatever_the_input_order(cli, tmp_path):
    records = [write_pred(tmp_path, "sure", np.full((8, 8), 0.99)),
               write_pred(tmp_path, "unsure", np.full((8, 8), 0.5)),
               write_pred(tmp_path, "mid", np.full((8, 8), 0.8))]
    for order in (records, records[::-1]):
        f = tmp_path / "pred.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in order))
        run = cli("entropy-rank", f)
        assert run.code == 0, run.stderr
        assert [r["image"] for r in run.records] == ["unsure.tif", "mid.tif", "sure.tif"]
        assert [r["rank"] for r in run.records] == [1, 2, 3]
        assert run.records[0]["entropy"] == pytest.approx(1.0)
        assert "entropy" in run.records[0]["definition"]


def test_maskrcnn_lowest_mean_confidence_first(cli, tmp_path):
    lines = [{"image": "a.tif", "model": "maskrcnn", "mean_confidence": 0.9},
             {"image": "b.tif", "model": "maskrcnn", "mean_confidence": None},
             {"image": "c.tif", "model": "maskrcnn", "mean_confidence": 0.6}]
    run = cli("entropy-rank", "-", input="".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["image"], r["score"]) for r in run.records] == [("b.tif", 0.0), ("c.tif", 0.6), ("a.tif", 0.9)]


def test_missing_prob_and_mixed_models(cli, tmp_path):
    ok = write_pred(tmp_path, "x", np.full((4, 4), 0.5))
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(ok) + "\n" + json.dumps({"image": "y.tif", "model": "unet", "prob": None}) + "\n")
    run = cli("entropy-rank", f)
    assert run.code == 1 and "--save-prob" in run.records[-1]["error"]
    f.write_text(json.dumps(ok) + "\n" + json.dumps({"image": "m.tif", "model": "maskrcnn", "mean_confidence": 1}) + "\n")
    mixed = cli("entropy-rank", f)
    assert mixed.code == 2 and "mixes Mask R-CNN" in mixed.stderr


def test_pipe_from_segment(cli, small_images, tmp_path):
    seg = cli("segment", small_images, "--out", tmp_path / "o", "--save-prob")
    run = cli("entropy-rank", input=seg.stdout)
    assert run.code == 0, run.stderr
    assert sorted(r["rank"] for r in run.records) == [1, 2]
    assert run.records[0]["entropy"] >= run.records[1]["entropy"]
