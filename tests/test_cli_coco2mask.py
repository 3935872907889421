"""coco2mask through the CLI: records, masks, lazy labels, broken input, path safety."""

import json

import numpy as np
import tifffile


def test_examples_reproduce_mask_confluence(cli, examples, tmp_path):
    out = tmp_path / "truth"
    run = cli("coco2mask", examples / "annotations.json", "--images", examples / "images",
              "--out", out, "--binary")
    assert run.code == 0, run.stderr
    records = run.records
    assert [r["file_name"] for r in records] == ["set20.tif", "set26.tif", "set30.tif"]
    for r in records:
        assert r["schema"] == "monolayer.truth/1"
        assert {"image", "mask", "width", "height", "instances", "confluence"} <= set(r)
        labels = tifffile.imread(r["mask"])
        assert labels.dtype == np.uint16 and labels.shape == (r["height"], r["width"])
        assert r["instances"] == len(np.unique(labels)) - 1
        assert r["confluence"] == (labels > 0).mean()
        original = tifffile.imread(examples / "masks" / r["file_name"]) > 0
        assert abs(r["confluence"] - original.mean()) < 0.001
        binary = tifffile.imread(r["binary"])
        assert set(np.unique(binary)) <= {0, 1} and np.array_equal(binary > 0, labels > 0)
    assert "3 done" in run.stderr


def test_lazy_merges_clusters(cli, examples, tmp_path):
    exact = cli("coco2mask", examples / "annotations.json", "--out", tmp_path / "e").records
    lazy = cli("coco2mask", examples / "annotations.json", "--out", tmp_path / "l", "--lazy").records
    for e, l in zip(exact, lazy):
        assert l["lazy"] is True and l["instances"] < e["instances"]
        assert l["confluence"] == e["confluence"]


def test_file_names_never_escape_the_output_folder(cli, tmp_path):
    doc = {"images": [{"id": 1, "file_name": "../../evil.tif", "width": 8, "height": 8},
                      {"id": 2, "file_name": "/tmp/abs/evil.tif", "width": 8, "height": 8},
                      {"id": 3, "file_name": "..", "width": 8, "height": 8}],
           "annotations": [{"id": 1, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    out = tmp_path / "deep" / "out"
    run = cli("coco2mask", tmp_path / "c.json", "--out", out)
    assert run.code == 0, run.stderr
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written[1:] == ["evil.labels.tif", "image-3.labels.tif"]
    assert written[0].startswith("evil-") and written[0].endswith(".labels.tif")
    assert sorted(p.name for p in tmp_path.rglob("*.tif")) == written


def test_broken_polygon_is_one_error_and_the_rest_converts(cli, tmp_path):
    doc = {"images": [{"id": 1, "file_name": "good.tif", "width": 8, "height": 8},
                      {"id": 2, "file_name": "bad.tif", "width": 8, "height": 8}],
           "annotations": [{"id": 1, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
                           {"id": 2, "image_id": 2, "segmentation": [[0, 0, 4]]}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    run = cli("coco2mask", tmp_path / "c.json", "--out", tmp_path / "out")
    assert run.code == 1
    good, bad = run.records
    assert good["confluence"] == 16 / 64 and "error" not in good
    assert "annotation 2" in bad["error"] and "at least 3" in bad["error"]
    errors = [line for line in run.stderr.splitlines() if line.startswith("monolayer: error:")]
    assert len(errors) == 1
    assert not (tmp_path / "out" / "bad.labels.tif").exists()


def test_image_size_mismatch_and_missing_image(cli, tmp_path):
    (tmp_path / "imgs").mkdir()
    tifffile.imwrite(tmp_path / "imgs" / "a.tif", np.zeros((10, 12), np.uint8))
    doc = {"images": [{"id": 1, "file_name": "a.tif", "width": 8, "height": 8},
                      {"id": 2, "file_name": "gone.tif", "width": 8, "height": 8}], "annotations": []}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    run = cli("coco2mask", tmp_path / "c.json", "--images", tmp_path / "imgs", "--out", tmp_path / "o")
    assert run.code == 1
    assert "12x10" in run.records[0]["error"] and "no such file" in run.records[1]["error"]


def test_not_a_coco_file_exits_65(cli, tmp_path):
    (tmp_path / "c.json").write_text("{}")
    run = cli("coco2mask", tmp_path / "c.json", "--out", tmp_path / "o")
    assert run.code == 65 and run.stdout == ""
    assert run.stderr.startswith("monolayer: error:") and "images" in run.stderr
