"""Issue 9, class 1: a record and the files it names always agree.

Each test creates the situation through the CLI and checks exit code, stderr,
stdout records and the files left behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import blob_image


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def three(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, centers in enumerate((((30, 40),), ((48, 64), (20, 100)), ((70, 30),))):
        tifffile.imwrite(folder / f"w{i}.tif", blob_image(centers=centers, seed=i))
    return folder


def small_coco(tmp_path: Path, names: list[str]) -> Path:
    images = [{"id": i + 1, "file_name": n, "width": 16, "height": 12} for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": i + 1, "segmentation": [[1, 1, 8 + i, 1, 8 + i, 8, 1, 8]]}
            for i in range(len(names))]
    # two touching cells in image 1, so exact and lazy labels differ
    anns.append({"id": 99, "image_id": 1, "segmentation": [[7, 1, 14, 1, 14, 8, 7, 8]]})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


# -- a second run never re-points the first run's records at other files ---------------

def test_segment_with_other_parameters_into_the_same_folder_is_refused(cli, three, tmp_path):
    out = tmp_path / "out"
    phase = cli("segment", three, "--out", out, "--save-prob")
    assert phase.code == 0
    before = {p.name: sha(p) for p in out.iterdir() if p.is_file()}
    for extra in (["--method", "canny"], ["--page", "0", "--method", "canny"]):
        other = cli("segment", three, "--out", out, *extra)
        assert other.code == 2 and other.stdout == ""
        line = one_line(other.stderr)
        assert f"{out} holds the outputs of another run" in line and "--overwrite" in line
    # Nothing was touched: every phase record still names its own bytes.
    assert {p.name: sha(p) for p in out.iterdir() if p.is_file()} == before
    for record in phase.records:
        assert sha(record["mask"]) == record["mask_sha256"]
        assert sha(record["prob"]) == record["prob_sha256"]


def test_the_same_settings_again_is_allowed_as_a_nightly_job_needs(cli, three, tmp_path):
    out = tmp_path / "out"
    assert cli("segment", three, "--out", out).code == 0
    tifffile.imwrite(three / "w3.tif", blob_image(seed=7))
    again = cli("segment", three, "--out", out, "--skip-existing")
    assert again.code == 0 and [bool(r.get("reused")) for r in again.records] == [True, True, True, False]


def test_overwrite_deletes_only_the_previous_runs_files(cli, three, tmp_path):
    out = tmp_path / "out"
    assert cli("segment", three, "--out", out, "--save-prob").code == 0
    (out / "notes.txt").write_text("mine")
    (out / "keep.part").write_text("mine too")
    only_one = tmp_path / "one"
    only_one.mkdir()
    shutil.copy(three / "w1.tif", only_one / "w1.tif")
    canny = cli("segment", only_one, "--out", out, "--method", "canny", "--overwrite")
    assert canny.code == 0, canny.stderr
    assert "deleted 6 file(s) of the previous run" in canny.stderr
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert left == ["keep.part", "notes.txt", "w1.mask.tif"]
    assert sha(out / "w1.mask.tif") == canny.records[0]["mask_sha256"]


def test_a_folder_of_masks_no_recorded_run_wrote_is_not_mixed_into(cli, three, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tifffile.imwrite(out / "w0.mask.tif", np.ones((4, 4), np.uint8))
    run = cli("segment", three, "--out", out)
    assert run.code == 2 and run.stdout == "" and "no recorded run wrote" in one_line(run.stderr)
    assert cli("segment", three, "--out", out, "--overwrite").code == 0


def test_coco2mask_exact_then_lazy_into_one_folder(cli, tmp_path):
    coco = small_coco(tmp_path, ["a.tif", "b.tif"])
    out = tmp_path / "truth"
    exact = cli("coco2mask", coco, "--out", out)
    assert exact.code == 0
    lazy = cli("coco2mask", coco, "--out", out, "--lazy")
    assert lazy.code == 2 and lazy.stdout == "" and "--overwrite" in one_line(lazy.stderr)
    for record in exact.records:  # the exact records still name exact labels
        assert sha(record["mask"]) == record["mask_sha256"]
    lazy = cli("coco2mask", coco, "--out", out, "--lazy", "--overwrite")
    assert lazy.code == 0 and all(r["lazy"] for r in lazy.records)
    assert [sha(r["mask"]) == r["mask_sha256"] for r in exact.records] == [False, True]
    # Other annotations into the same folder are another run too.
    (tmp_path / "x").mkdir()
    other = small_coco(tmp_path / "x", ["a.tif"])
    assert cli("coco2mask", other, "--out", out, "--lazy").code == 2


# -- every record that names a file carries its checksum, and readers check it ---------

def test_records_carry_the_checksum_of_every_file_they_name(cli, three, tmp_path):
    seg = cli("segment", three, "--out", tmp_path / "s", "--save-prob").records
    assert all(sha(r["mask"]) == r["mask_sha256"] and sha(r["prob"]) == r["prob_sha256"] for r in seg)
    no_prob = cli("segment", three, "--out", tmp_path / "n").records
    assert all(r["prob"] is None and r["prob_sha256"] is None for r in no_prob)
    truth = cli("coco2mask", small_coco(tmp_path, ["a.tif"]), "--out", tmp_path / "t", "--binary").records
    assert sha(truth[0]["mask"]) == truth[0]["mask_sha256"]
    assert sha(truth[0]["binary"]) == truth[0]["binary_sha256"]


def test_evaluate_refuses_a_mask_replaced_since_its_record(cli, three, tmp_path):
    pred = cli("segment", three, "--out", tmp_path / "p")
    (tmp_path / "pred.jsonl").write_text(pred.stdout)
    truth = tmp_path / "truth"
    truth.mkdir()
    for r in pred.records:
        shutil.copy(r["mask"], truth / Path(r["image"]).name)
    # Another image's mask copied over w1's: same shape, wrong cells.
    shutil.copy(pred.records[0]["mask"], pred.records[1]["mask"])
    run = cli("evaluate", tmp_path / "pred.jsonl", "--truth", truth, "-q")
    assert run.code == 1
    bad = [r for r in run.records if "error" in r]
    assert len(bad) == 1 and bad[0]["exit_code"] == 65 and bad[0]["image"] == pred.records[1]["image"]
    assert "is not the file this record was written with" in bad[0]["error"]
    assert "pred.jsonl:2" in run.stderr
    assert sorted(r["iou"] for r in run.records if "iou" in r) == [1.0, 1.0]
    # A deleted mask is named, not read as something else.
    Path(pred.records[2]["mask"]).unlink()
    run = cli("evaluate", tmp_path / "pred.jsonl", "--truth", truth, "-q")
    assert "does not exist" in run.records[2]["error"] and run.records[2]["exit_code"] == 65


def test_evaluate_checks_truth_masks_against_their_records(cli, three, tmp_path):
    coco = small_coco(tmp_path, ["w0.tif", "w1.tif"])
    truth = cli("coco2mask", coco, "--out", tmp_path / "t")
    (tmp_path / "truth.jsonl").write_text(truth.stdout)
    tifffile.imwrite(truth.records[0]["mask"], np.zeros((12, 16), np.uint16))  # hand-edited
    masks = tmp_path / "m"
    masks.mkdir()
    for name in ("w0", "w1"):
        tifffile.imwrite(masks / f"{name}.mask.tif", np.ones((12, 16), np.uint8))
    run = cli("evaluate", masks, "--truth", tmp_path / "truth.jsonl", "-q")
    assert run.code == 1
    errors = [r for r in run.records if "error" in r]
    assert len(errors) == 1 and "is not the file this record was written with" in errors[0]["error"]


def test_entropy_rank_refuses_a_replaced_probability_map(cli, tmp_path):
    lines = []
    for name, p in (("a", 0.5), ("b", 0.9), ("c", 0.7)):
        path = tmp_path / f"{name}.prob.tif"
        tifffile.imwrite(path, np.full((8, 8), p, np.float32))
        lines.append({"image": f"{name}.tif", "mask": f"{name}.mask.tif", "prob": str(path),
                      "prob_sha256": sha(path), "model": "unet"})
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    shutil.copy(tmp_path / "b.prob.tif", tmp_path / "a.prob.tif")  # a would now rank as sure as b
    run = cli("entropy-rank", tmp_path / "pred.jsonl", "-q")
    assert run.code == 1
    assert [r["image"] for r in run.records if "rank" in r] == ["c.tif", "b.tif"]
    assert run.records[-1]["exit_code"] == 65 and "pred.jsonl:1" in run.records[-1]["error"]
    assert "is not the file this record was written with" in run.stderr


def make_labelled(cli, tmp_path: Path) -> tuple[Path, list[dict]]:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(images / f"{name}.tif", blob_image(shape=(12, 16), seed=ord(name)))
    truth = cli("coco2mask", small_coco(tmp_path, ["a.tif", "b.tif", "c.tif"]), "--images", images,
                "--out", tmp_path / "t")
    assert truth.code == 0, truth.stderr
    (tmp_path / "truth.jsonl").write_text(truth.stdout)
    return images, truth.records


def test_al_round_and_train_refuse_truth_masks_replaced_since_coco2mask(cli, tmp_path):
    _, records = make_labelled(cli, tmp_path)
    shutil.copy(records[0]["mask"], records[2]["mask"])
    init = cli("al-round", "init", "--images", tmp_path / "truth.jsonl", "--initial", "1",
               "-o", tmp_path / "m.json")
    assert init.code == 65 and init.stdout == "" and not (tmp_path / "m.json").exists()
    assert "truth.jsonl:3" in one_line(init.stderr)
    pytest.importorskip("torch")
    train = cli("train", "--model", "unet", "--train", tmp_path / "truth.jsonl", "--epochs", "1",
                "-o", tmp_path / "u.pt", "--base-channels", "2", "-q")
    assert train.code == 65 and train.stdout == "" and not (tmp_path / "u.pt").exists()
    assert "is not the file this record was written with" in one_line(train.stderr)


def test_train_refuses_an_image_changed_since_coco2mask_hashed_it(cli, tmp_path):
    pytest.importorskip("torch")
    images, _ = make_labelled(cli, tmp_path)
    tifffile.imwrite(images / "b.tif", blob_image(shape=(12, 16), seed=1))
    train = cli("train", "--model", "unet", "--train", tmp_path / "truth.jsonl", "--epochs", "1",
                "-o", tmp_path / "u.pt", "--base-channels", "2", "-q")
    assert train.code == 65 and train.stdout == "" and not (tmp_path / "u.pt").exists()
    assert "is not the image its truth record was made for" in one_line(train.stderr)


def test_train_never_replaces_a_file_that_is_not_its_own_checkpoint(cli, tmp_path):
    precious = tmp_path / "model.pt"
    precious.write_bytes(b"someone's checkpoint")
    run = cli("train", "--model", "unet", "--train", tmp_path / "nothing", "--epochs", "1", "-o", precious)
    assert run.code == 2 and run.stdout == "" and "--overwrite" in one_line(run.stderr)
    assert precious.read_bytes() == b"someone's checkpoint"


# -- output names never collide -----------------------------------------------------

def test_coco2mask_names_never_collide_even_with_suffix_lookalikes_or_case(cli, tmp_path):
    names = ["p1/A01.tif", "A01-3.tif", "p2/A01.tif", "a01.tif", "p3/A01-3.tif", "A01.TIF"]
    run = cli("coco2mask", small_coco(tmp_path, names), "--out", tmp_path / "t")
    assert run.code == 0, run.stderr
    masks = [r["mask"] for r in run.records]
    assert len({m.casefold() for m in masks}) == len(names)
    for record in run.records:
        assert sha(record["mask"]) == record["mask_sha256"]


def test_segment_names_never_collide_across_folders_and_case(cli, tmp_path):
    folders = [tmp_path / d for d in ("p1", "p2", "p3")]
    for i, folder in enumerate(folders):
        folder.mkdir()
        tifffile.imwrite(folder / "A01.tif", blob_image(seed=i))
    tifffile.imwrite(folders[2] / "a01.tif", blob_image(seed=9))
    first = cli("segment", *folders, "--out", tmp_path / "o1")
    # An image named like another's suffixed stem still gets a name of its own.
    suffixed = Path(first.records[1]["mask"]).name.removesuffix(".mask.tif")
    tifffile.imwrite(folders[0] / f"{suffixed}.tif", blob_image(seed=11))
    run = cli("segment", *folders, "--out", tmp_path / "o2")
    assert run.code == 0
    masks = [r["mask"] for r in run.records]
    assert len(masks) == 5 and len({m.casefold() for m in masks}) == 5
    assert all(sha(r["mask"]) == r["mask_sha256"] for r in run.records)


# -- cached weights are hashed like any file ----------------------------------------------

def test_a_cached_published_checkpoint_is_hashed_not_trusted_by_name(cli, three, tmp_path, private_cache):
    from monolayer.weights import PUBLISHED

    fake = private_cache / PUBLISHED["sam_vit_b"].filename
    fake.write_bytes(b"not the published checkpoint")
    run = cli("segment", three, "--out", tmp_path / "o", "-m", "sam", "-w", "sam_vit_b")
    assert run.code == 69 and run.stdout == ""
    line = one_line(run.stderr)
    assert "cached sam_vit_b" in line and "not the published" in line and "fetch sam_vit_b --force" in line
