"""calibrate: fitted parameters, an honest cross-validated error, and segment --params."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from monolayer.backends.classical import ClassicalBackend
from monolayer.backends.phase import PhaseParams, segment_phase
from monolayer.calibrate import PHASE_LADDERS, PhaseImage, Score, calibrate_phase, cross_validate, folds
from monolayer.io.images import load_image, normalize, to_grayscale
from monolayer.metrics import compare

from conftest import EXAMPLES


def faint_cells(seed: int, centers, shape=(128, 128), radius=20, amplitude=5.0):
    """An 8-bit image of weakly textured discs on a flat noisy field, and its truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 120.0) + rng.normal(0, 1.0, shape)
    truth = np.zeros(shape, bool)
    for cy, cx in centers:
        inside = np.hypot(yy - cy, xx - cx) < radius
        truth |= inside
        image[inside] += rng.normal(0, amplitude, inside.sum())
    return np.clip(image, 0, 255).astype(np.uint8), truth


CENTERS = [((40, 40), (90, 90)), ((64, 64),), ((30, 90), (95, 35)), ((40, 80), (90, 40))]


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Three faint-cell images in images/ with their masks in masks/."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i, centers in enumerate(CENTERS[:3]):
        image, truth = faint_cells(i, centers)
        tifffile.imwrite(tmp_path / "images" / f"c{i}.tif", image)
        tifffile.imwrite(tmp_path / "masks" / f"c{i}.tif", truth.astype(np.uint8))
    return tmp_path


def calibrate_cli(cli, folder: Path, out: Path, *extra: str):
    return cli("calibrate", folder / "images", "--truth", folder / "masks", "-o", out, "-q", *extra)


_CALIBRATED: dict[str, bytes] = {}


@pytest.fixture
def params_file(cli, labelled: Path, tmp_path: Path) -> Path:
    """A classical parameters file for ``labelled`` (calibrated once per module, then copied:
    the images are the same every time)."""
    path = tmp_path / "scope.json"
    if "classical" not in _CALIBRATED:
        assert calibrate_cli(cli, labelled, path).code == 0
        _CALIBRATED["classical"] = path.read_bytes()
    path.write_bytes(_CALIBRATED["classical"])
    return path


# -- the search itself ------------------------------------------------------------------

def test_staged_phase_masks_equal_segment_phase() -> None:
    """The cached stages reproduce segment_phase bit for bit, over settings from every ladder."""
    image = normalize(to_grayscale(load_image(EXAMPLES / "images" / "set30.tif").array))[:300, :300]
    staged = PhaseImage(image, np.zeros(image.shape, bool))
    rng = np.random.default_rng(0)
    settings = [PhaseParams()] + [PhaseParams(**{n: v[rng.integers(len(v))] for n, v in PHASE_LADDERS.items()})
                                  for _ in range(12)]
    for params in settings:
        expected, _ = segment_phase(image, params)
        assert np.array_equal(staged.mask(params), expected), params


def test_cross_validated_error_never_comes_from_a_fit_that_saw_the_image() -> None:
    """A constructed case: an image scores 1.0 under parameters fitted on it, 0.0 under
    parameters fitted without it, 0.5 under the default. An honest estimate is all zeros;
    the training error (parameters fitted on all) is all ones."""
    fitted_on: list[frozenset[int]] = []

    def fit(train: list[int]) -> frozenset[int]:
        fitted_on.append(frozenset(train))
        return frozenset(train)

    def evaluate(params, indices: list[int]) -> Score:
        errors = tuple(0.5 if params == "default" else float(i in params) for i in indices)
        return Score(errors, tuple(1.0 - e for e in errors))

    for n in (2, 3, 7, 12):
        result = cross_validate(n, fit, evaluate, "default")
        assert result.cv_errors == [0.0] * n
        assert result.fit_cv_errors == [0.0] * n
        assert result.train_errors == [1.0] * n
        assert result.calibrated and result.params == frozenset(range(n))
        held = [set(h) for h in folds(n)]
        assert sorted(i for h in held for i in h) == list(range(n))
        assert all(not (h & p) for h, p in zip(held, result.fold_params))


def test_the_default_is_kept_when_fitting_does_not_beat_it_in_cross_validation() -> None:
    def evaluate(params, indices: list[int]) -> Score:
        # Fitted parameters are perfect on their own images, poor elsewhere; the default is fair.
        errors = tuple(0.1 if params == "default" else (0.0 if i in params else 0.3) for i in indices)
        return Score(errors, tuple(0.5 for _ in indices))

    result = cross_validate(4, lambda train: frozenset(train), evaluate, "default")
    assert not result.calibrated and result.params == "default"
    assert result.fit_cv_errors == [0.3] * 4
    assert result.cv_errors == [0.1] * 4  # each fold's procedure chose the default too


def test_calibration_fixes_images_the_default_gets_wrong() -> None:
    images, truths = [], []
    for i, centers in enumerate(CENTERS):
        image, truth = faint_cells(i, centers)
        images.append(normalize(image.astype(np.float32)))
        truths.append(truth)
    result = calibrate_phase(images[:3], truths[:3])
    assert result.calibrated
    assert np.mean(result.cv_errors) < 0.5 * np.mean(result.default_errors)
    # And on an image it never saw:
    default = compare(segment_phase(images[3])[0], truths[3])["abs_confluence_error"]
    calibrated = compare(segment_phase(images[3], result.params)[0], truths[3])["abs_confluence_error"]
    assert calibrated < default


# -- the command --------------------------------------------------------------------------

def test_calibrate_then_segment_with_the_params(cli, labelled: Path, tmp_path: Path) -> None:
    params_file = tmp_path / "scope.json"
    run = calibrate_cli(cli, labelled, params_file)
    assert run.code == 0, run.stderr
    [record] = run.records
    assert record["schema"] == "monolayer.calibrate/1" and record["model"] == "classical"
    assert record["images"] == 3 and record["folds"] == 3
    assert record["cv_abs_confluence_error"] < record["default_abs_confluence_error"]
    sha = hashlib.sha256(params_file.read_bytes()).hexdigest()
    assert record["output_sha256"] == sha
    doc = json.loads(params_file.read_text())
    assert doc["schema"] == "monolayer.params/1" and doc["params"] == record["params"]
    assert [Path(x["image"]).name for x in doc["calibration"]["images"]] == ["c0.tif", "c1.tif", "c2.tif"]

    seg = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "pred", "-q")
    assert seg.code == 0, seg.stderr
    expected = ClassicalBackend(params=doc["params"])
    for rec in seg.records:
        assert rec["params"]["params_file"] == {"path": str(params_file), "sha256": sha, "weights_sha256": None}
        assert {k: rec["params"][k] for k in doc["params"]} == doc["params"]
        gray = to_grayscale(load_image(rec["image"]).array)
        assert rec["confluence"] == pytest.approx(float(expected.predict(normalize(gray)).mask.mean()))


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_images_are_refused(cli, labelled: Path, tmp_path: Path, count: int) -> None:
    images = sorted((labelled / "images").iterdir())[:count]
    args = [str(p) for p in images] if images else [str(tmp_path / "empty")]
    if not images:
        (tmp_path / "empty").mkdir()
    run = cli("calibrate", *args, "--truth", labelled / "masks", "-o", tmp_path / "p.json")
    assert run.code == (2 if count else 66)
    if count:
        assert "label at least 3 images" in run.stderr
    assert not (tmp_path / "p.json").exists()


def test_two_images_are_accepted_with_a_warning(cli, labelled: Path, tmp_path: Path) -> None:
    images = sorted((labelled / "images").iterdir())[:2]
    run = cli("calibrate", *images, "--truth", labelled / "masks", "-o", tmp_path / "p.json", "-q")
    assert run.code == 0 and "rough" in run.stderr


def test_an_image_without_truth_is_a_data_error(cli, labelled: Path, tmp_path: Path) -> None:
    extra, _ = faint_cells(9, CENTERS[0])
    tifffile.imwrite(labelled / "images" / "unlabelled.tif", extra)
    run = calibrate_cli(cli, labelled, tmp_path / "p.json")
    assert run.code == 65 and "unlabelled.tif" in run.stderr


def test_a_params_file_for_another_model_is_refused(cli, labelled: Path, tmp_path: Path, params_file: Path) -> None:
    run = cli("segment", labelled / "images", "--params", params_file, "--method", "canny",
              "--out", tmp_path / "o")
    assert run.code == 2 and "phase" in run.stderr
    doc = json.loads(params_file.read_text())
    doc.update(model="unet", params={"threshold": 0.4}, weights_sha256="0" * 64)
    (tmp_path / "unet.json").write_text(json.dumps(doc))
    run = cli("segment", labelled / "images", "--params", tmp_path / "unet.json", "--out", tmp_path / "o")
    assert run.code == 2 and "--model unet" in run.stderr


@pytest.mark.parametrize("change, message", [
    ({"t_abs": 5.0}, "outside"),
    ({"erode_radius": 2.5}, "whole number"),
    ({"t_abs_typo": 0.02}, "unknown phase parameter"),
    ({"max_hole": "big"}, "max_hole"),
])
def test_a_tampered_params_file_is_a_data_error(cli, labelled: Path, tmp_path: Path, params_file: Path,
                                               change, message) -> None:
    doc = json.loads(params_file.read_text())
    doc["params"].update(change)
    params_file.write_text(json.dumps(doc))
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o")
    assert run.code == 65 and message in run.stderr and str(params_file) in run.stderr


@pytest.mark.parametrize("text", ["{", "[]", '{"schema": "monolayer.cellpose-thresholds/1"}',
                                  '{"schema": "monolayer.params/1", "model": "classical", "method": "phase"}'])
def test_a_corrupted_params_file_is_a_data_error(cli, labelled: Path, tmp_path: Path, text: str) -> None:
    params_file = tmp_path / "bad.json"
    params_file.write_text(text)
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o")
    assert run.code == 65 and str(params_file) in run.stderr


def test_rerun_into_the_same_folder_with_other_params_is_refused(cli, labelled: Path, tmp_path: Path,
                                                                 params_file: Path) -> None:
    first, second = params_file, tmp_path / "b.json"
    doc = json.loads(first.read_text())
    doc["params"]["min_size"] = doc["params"]["min_size"] + 1
    second.write_text(json.dumps(doc))
    out = tmp_path / "pred"
    assert cli("segment", labelled / "images", "--params", first, "--out", out, "-q").code == 0
    # The same values from a copy elsewhere: the same run, accepted.
    copy = tmp_path / "copy" / "a.json"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    assert cli("segment", labelled / "images", "--params", copy, "--out", out, "-q").code == 0
    refused = cli("segment", labelled / "images", "--params", second, "--out", out, "-q")
    assert refused.code == 2
    again = cli("segment", labelled / "images", "--params", second, "--out", out, "-q", "--overwrite")
    assert again.code == 0 and again.records[0]["params"]["min_size"] == doc["params"]["min_size"]


# -- learned models: the threshold ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory) -> Path:
    from test_backend_unet import save_unet

    folder = tmp_path_factory.mktemp("unet")
    return save_unet(folder / "tiny.pt", base_channels=4), save_unet(folder / "other.pt", seed=1, base_channels=4)


def test_unet_threshold_is_calibrated_and_applied(cli, labelled: Path, tmp_path: Path, tiny_unet) -> None:
    weights, other = tiny_unet
    params_file = tmp_path / "unet.json"
    # A random tiny U-Net overlaps nothing: refused by default, accepted with --min-iou 0.
    refused = calibrate_cli(cli, labelled, params_file, "--model", "unet", "--weights", weights, "--device", "cpu")
    assert refused.code == 65 and "--min-iou" in refused.stderr and not params_file.exists()
    run = calibrate_cli(cli, labelled, params_file, "--model", "unet", "--weights", weights, "--device", "cpu",
                        "--min-iou", "0")
    assert run.code == 0, run.stderr
    [record] = run.records
    threshold = record["params"]["threshold"]
    assert 0.0 < threshold < 1.0
    doc = json.loads(params_file.read_text())
    assert doc["model"] == "unet" and doc["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    seg = cli("segment", labelled / "images", "-m", "unet", "-w", weights, "--device", "cpu",
              "--params", params_file, "--out", tmp_path / "o", "-q", "--save-prob")
    assert seg.code == 0, seg.stderr
    for rec in seg.records:
        assert rec["params"]["threshold"] == threshold and rec["params"]["sources"]["threshold"] == "file"
        prob = tifffile.imread(rec["prob"])
        assert rec["confluence"] == pytest.approx(float((prob >= np.float32(threshold)).mean()))
    # An explicit flag still wins over the file.
    flag = cli("segment", labelled / "images", "-m", "unet", "-w", weights, "--device", "cpu",
               "--params", params_file, "--threshold", "0.5", "--out", tmp_path / "o2", "-q")
    assert flag.code == 0 and flag.records[0]["params"]["sources"]["threshold"] == "flag"
    # Other weights: refused, naming both.
    wrong = cli("segment", labelled / "images", "-m", "unet", "-w", other, "--device", "cpu",
                "--params", params_file, "--out", tmp_path / "o3", "-q")
    assert wrong.code == 2 and str(params_file) in wrong.stderr and "other.pt" in wrong.stderr
    # A file for unet handed to the classical model: refused.
    classical = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o4", "-q")
    assert classical.code == 2 and "--model unet" in classical.stderr


def test_a_sam_threshold_file_is_applied_by_segment(cli, labelled: Path, tmp_path: Path, sensitive_sam) -> None:
    """SAM's weights expect raw 8-bit input (normalize sam8): the file records that, and
    segment reads the file back (it once refused its own calibrate's sam8)."""
    params_file = tmp_path / "sam.json"
    run = calibrate_cli(cli, labelled, params_file, "--model", "sam", "--weights", sensitive_sam,
                        "--device", "cpu", "--min-iou", "0")
    assert run.code == 0, run.stderr
    assert json.loads(params_file.read_text())["calibration"]["normalize"] == "sam8"
    seg = cli("segment", labelled / "images", "-m", "sam", "-w", sensitive_sam, "--device", "cpu",
              "--params", params_file, "--out", tmp_path / "o", "-q")
    assert seg.code == 0, seg.stderr
    assert all(r["params"]["threshold"] == run.records[0]["params"]["threshold"] for r in seg.records)
    other = cli("segment", labelled / "images", "-m", "sam", "-w", sensitive_sam, "--device", "cpu",
                "--params", params_file, "--normalize", "percentile", "--out", tmp_path / "p", "-q")
    assert other.code == 2 and "sam8" in other.stderr


# -- review of issue 13: regressions ---------------------------------------------------------

def _no_work(monkeypatch) -> None:
    """Any image read or fit from here on fails the test: the refusal must come first."""
    import monolayer.calibrate
    import monolayer.io.images

    def boom(*_args, **_kwargs):
        raise AssertionError("work done before -o was checked")

    monkeypatch.setattr(monolayer.io.images, "load_image", boom)
    monkeypatch.setattr(monolayer.calibrate, "calibrate_phase", boom)


@pytest.mark.parametrize("target", ["image", "mask", "hardlink", "truth_jsonl"])
def test_out_that_is_an_input_is_refused_before_any_work(cli, labelled: Path, tmp_path: Path, monkeypatch,
                                                        target: str) -> None:
    import os

    truth = labelled / "masks"
    if target == "image":
        out = labelled / "images" / "c1.tif"
    elif target == "mask":
        out = labelled / "masks" / "c1.tif"
    elif target == "hardlink":
        out = tmp_path / "linked.json"
        os.link(labelled / "images" / "c2.tif", out)
    else:
        truth = tmp_path / "truth.jsonl"
        truth.write_text("".join(json.dumps({"schema": "monolayer.truth/1", "image": f"c{i}.tif",
                                             "mask": str(labelled / "masks" / f"c{i}.tif")}) + "\n"
                                 for i in range(3)))
        out = truth
    before = out.read_bytes()
    _no_work(monkeypatch)
    run = cli("calibrate", labelled / "images", "--truth", truth, "-o", out, "-q")
    assert run.code == 2 and "-o" in run.stderr and "input" in run.stderr, run.stderr
    assert out.read_bytes() == before


@pytest.mark.parametrize("kind", ["folder", "symlink", "no_parent"])
def test_out_folder_link_or_missing_parent_is_refused_before_any_work(cli, labelled: Path, tmp_path: Path,
                                                                      monkeypatch, kind: str) -> None:
    out = tmp_path / "adir"
    if kind == "folder":
        out.mkdir()
    elif kind == "symlink":
        out.symlink_to(tmp_path / "elsewhere.json")
    else:
        out = tmp_path / "missing" / "p.json"
    _no_work(monkeypatch)
    run = cli("calibrate", labelled / "images", "--truth", labelled / "masks", "-o", out, "-q")
    assert run.code == 2 and str(out) in run.stderr and "(" in run.stderr  # with a hint
    assert not (tmp_path / "elsewhere.json").exists()


def test_two_images_matching_one_truth_by_name_are_refused(cli, labelled: Path, tmp_path: Path) -> None:
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
    for i in range(3):
        (tmp_path / "day1" / f"c{i}.tif").write_bytes((labelled / "images" / f"c{i}.tif").read_bytes())
    other, _ = faint_cells(7, CENTERS[3])
    tifffile.imwrite(tmp_path / "day2" / "c0.tif", other)  # another image named like day1's c0
    run = cli("calibrate", tmp_path / "day1", tmp_path / "day2", "--truth", labelled / "masks",
              "-o", tmp_path / "p.json", "-q")
    assert run.code == 65 and "cannot tell which" in run.stderr and "day2" in run.stderr
    assert not (tmp_path / "p.json").exists()
    # Matched by checksum, the other image (another checksum) is not a candidate at all.
    truth = tmp_path / "truth.jsonl"
    sha = hashlib.sha256((tmp_path / "day1" / "c0.tif").read_bytes()).hexdigest()
    truth.write_text(json.dumps({"schema": "monolayer.truth/1", "image": "elsewhere/c0.tif", "image_sha256": sha,
                                 "mask": str(labelled / "masks" / "c0.tif")}) + "\n")
    run = cli("calibrate", tmp_path / "day1" / "c0.tif", tmp_path / "day2" / "c0.tif", "--truth", truth,
              "-o", tmp_path / "p.json", "-q")
    assert run.code == 65 and "checksum" in run.stderr and str(tmp_path / "day2" / "c0.tif") in run.stderr
    # Matched by path (no checksum, no folder in the name), the other's claim by name alone is
    # refused, naming the owner.
    truth = tmp_path / "day1" / "truth.jsonl"
    truth.write_text(json.dumps({"schema": "monolayer.truth/1", "image": "c0.tif",
                                 "mask": str(labelled / "masks" / "c0.tif")}) + "\n")
    run = cli("calibrate", tmp_path / "day1" / "c0.tif", tmp_path / "day2" / "c0.tif", "--truth", truth,
              "-o", tmp_path / "p.json", "-q")
    assert run.code == 65 and "belongs to" in run.stderr and str(tmp_path / "day2" / "c0.tif") in run.stderr


@pytest.mark.parametrize("flags, named", [(("--normalize", "none"), "percentile"),
                                          (("--resize", "128"), "full size")])
def test_segment_refuses_preprocessing_unlike_the_calibration(cli, labelled: Path, tmp_path: Path,
                                                               params_file: Path, flags, named) -> None:
    run = cli("segment", labelled / "images", "--params", params_file, *flags, "--out", tmp_path / "o", "-q")
    assert run.code == 2 and flags[0] in run.stderr and flags[1] in run.stderr and named in run.stderr
    assert str(params_file) in run.stderr
    same = cli("segment", labelled / "images", "--params", params_file, "--normalize", "percentile",
               "--out", tmp_path / "o2", "-q")
    assert same.code == 0, same.stderr
    doc = json.loads(params_file.read_text())
    assert doc["calibration"]["normalize"] == "percentile" and doc["calibration"]["resize"] is None


def _tamper(params_file: Path, change) -> None:
    doc = json.loads(params_file.read_text())
    change(doc)
    params_file.write_text(json.dumps(doc))


@pytest.mark.parametrize("reference", [None, {}, "missing", {"noise": "abc"}, {"noise": [0.1]},
                                       {"noise": [0.2, 0.1]}, {"future_measure": [0, 1]}])
def test_a_bad_or_missing_qc_reference_is_refused(cli, labelled: Path, tmp_path: Path, params_file: Path,
                                                  reference) -> None:
    def change(doc):
        if reference == "missing":
            del doc["qc_reference"]
        else:
            doc["qc_reference"] = reference

    _tamper(params_file, change)
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o", "-q")
    assert run.code == 65 and str(params_file) in run.stderr and "qc_reference" in run.stderr, run.stderr


def test_the_qc_reference_of_a_params_file_flags_unlike_images(cli, labelled: Path, tmp_path: Path,
                                                                params_file: Path) -> None:
    _tamper(params_file, lambda doc: doc.update(qc_reference={"noise": [1e-9, 2e-9]}))
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o", "-q")
    assert run.code == 0 and all("unlike_calibration" in r["flags"] for r in run.records)


def test_calibrate_refuses_meaningless_truth_and_small_images(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, shape, truth_of in (("blank", (128, 128), lambda s: np.zeros(s, np.uint8)),
                                  ("small", (32, 32), lambda s: np.ones(s, np.uint8))):
        for folder in ("images", "masks"):
            (tmp_path / name / folder).mkdir(parents=True)
        for i in range(3):
            image = (120 + rng.normal(0, 2, shape)).astype(np.uint8)
            tifffile.imwrite(tmp_path / name / "images" / f"b{i}.tif", image)
            tifffile.imwrite(tmp_path / name / "masks" / f"b{i}.tif", truth_of(shape))
    blank = calibrate_cli(cli, tmp_path / "blank", tmp_path / "b.json")
    assert blank.code == 65 and "empty" in blank.stderr and not (tmp_path / "b.json").exists()
    small = calibrate_cli(cli, tmp_path / "small", tmp_path / "s.json")
    assert small.code == 65 and "64 px" in small.stderr and not (tmp_path / "s.json").exists()


def test_calibrate_reports_its_own_images_flags(cli, labelled: Path, tmp_path: Path) -> None:
    from monolayer import qc

    run = calibrate_cli(cli, labelled, tmp_path / "p.json")
    assert run.code == 0
    [record] = run.records
    doc = json.loads((tmp_path / "p.json").read_text())
    for entry in doc["calibration"]["images"]:
        gray = to_grayscale(load_image(entry["image"]).array)
        expected = qc.flags(qc.measure(gray, gray.dtype), None)
        assert entry["flags"] == expected
        assert record["image_flags"].get(entry["image"], []) == expected
        if expected:
            assert f"{entry['image']} is flagged" in run.stderr


@pytest.mark.parametrize("how", ["content", "name"])
def test_images_of_one_field_are_warned_about(cli, labelled: Path, tmp_path: Path, how: str) -> None:
    images = labelled / "images"
    if how == "content":  # a copy with one pixel changed: not an independent image
        copy = tifffile.imread(images / "c0.tif")
        copy[5, 5] ^= 1
        tifffile.imwrite(images / "c9.tif", copy)
        (labelled / "masks" / "c9.tif").write_bytes((labelled / "masks" / "c0.tif").read_bytes())
        expected = ("c0.tif", "c9.tif")
    else:  # time-lapse frames of one well, site and tile, by their names
        for i, frame in ((0, "00d20h00m"), (1, "01d12h00m")):
            for folder in ("images", "masks"):
                (labelled / folder / f"c{i}.tif").rename(labelled / folder / f"A172_Phase_C7_1_{frame}_4.tif")
        expected = ("A172_Phase_C7_1_00d20h00m_4.tif", "A172_Phase_C7_1_01d12h00m_4.tif")
    run = calibrate_cli(cli, labelled, tmp_path / "p.json")
    assert run.code == 0 and "same field of view" in run.stderr
    [record] = run.records
    assert record["similar_images"] == 1
    [pair] = json.loads((tmp_path / "p.json").read_text())["calibration"]["similar_images"]
    assert tuple(Path(p).name for p in pair["images"]) == expected


def test_different_fields_are_not_called_similar(labelled: Path) -> None:
    from monolayer.commands.calibrate import Labelled, similar_pairs

    images = [Labelled(str(p), "", tifffile.imread(p), np.dtype(np.uint8), np.zeros((128, 128), bool))
              for p in sorted((labelled / "images").iterdir())]
    assert similar_pairs(images) == []


@pytest.mark.parametrize("change, field", [
    ({"min_size": 10**9}, "min_size"), ({"t_abs": 1.0}, "t_abs"), ({"t_abs": 0, "k_noise": 0}, "t_abs"),
    ({"window_sigma": 20}, "window_sigma"), ({"max_hole": -1}, "max_hole"), ({"k_noise": -1}, "k_noise"),
    ({"min_size": True}, "min_size"),
    # float32 texture / (2 x 5e-324) divides by zero: the lower bound keeps the arithmetic finite
    ({"t_abs": 5e-324, "k_noise": 0}, "t_abs"), ({"t_abs": 1e-5, "k_noise": 0}, "t_abs"),
])
def test_absurd_phase_values_are_refused(cli, labelled: Path, tmp_path: Path, params_file: Path,
                                         change, field) -> None:
    _tamper(params_file, lambda doc: doc["params"].update(change))
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o", "-q")
    assert run.code == 65 and str(params_file) in run.stderr and field in run.stderr, run.stderr


@pytest.mark.parametrize("raw", ['"min_size": 1' + "0" * 400, '"t_abs": 1' + "0" * 400,
                                 '"window_sigma": 1e400'])
def test_huge_numbers_are_a_data_error_not_a_crash(cli, labelled: Path, tmp_path: Path, params_file: Path,
                                                   raw: str) -> None:
    name = raw.split('"')[1]
    text = params_file.read_text()
    start = text.index(f'"{name}":')
    end = text.index("\n", start)
    params_file.write_text(text[:start] + raw + ("," if text[end - 1] == "," else "") + text[end:])
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o", "-q")
    assert run.code == 65 and str(params_file) in run.stderr and name in run.stderr, run.stderr


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(params={}), "'params'"),
    (lambda d: d["params"].pop("halo_delta"), "halo_delta"),
    (lambda d: (d["calibration"].update(calibrated=False), d["params"].update(t_abs=0.05)), "calibrated"),
    (lambda d: d["calibration"].pop("normalize"), "normalize"),
    (lambda d: d["calibration"].update(resize="big"), "resize"),
    (lambda d: d.update(weights_sha256="a" * 64), "no weights"),
    (lambda d: d.update(qc_version=None), "qc_version"),
])
def test_inconsistent_params_files_are_refused(cli, labelled: Path, tmp_path: Path, params_file: Path,
                                               change, message) -> None:
    _tamper(params_file, change)
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o", "-q")
    assert run.code == 65 and str(params_file) in run.stderr and message in run.stderr, run.stderr
    assert "None" not in run.stderr


def test_calibrated_false_with_the_defaults_is_accepted(cli, labelled: Path, tmp_path: Path,
                                                        params_file: Path) -> None:
    from dataclasses import asdict

    _tamper(params_file, lambda d: (d["calibration"].update(calibrated=False), d.update(params=asdict(PhaseParams()))))
    run = cli("segment", labelled / "images", "--params", params_file, "--out", tmp_path / "o", "-q")
    assert run.code == 0, run.stderr


@pytest.mark.parametrize("threshold", [1e-300, 0.999, 0.0, "0.5", None])
def test_a_learned_threshold_out_of_bounds_is_refused(params_file: Path, threshold) -> None:
    from monolayer.calibrate import read_params
    from monolayer.errors import DataError

    _tamper(params_file, lambda d: d.update(model="unet", method=None, params={"threshold": threshold},
                                            weights_sha256="0" * 64))
    with pytest.raises(DataError, match="threshold"):
        read_params(params_file)


def test_the_record_names_what_each_error_estimates(cli, labelled: Path, tmp_path: Path) -> None:
    from monolayer.schema import check

    run = calibrate_cli(cli, labelled, tmp_path / "p.json")
    [record] = run.records
    check("calibrate", record, "record")
    block = json.loads((tmp_path / "p.json").read_text())["calibration"]
    assert record["written"] == ("fitted" if record["calibrated"] else "default")
    assert record["cv_abs_confluence_error"] == pytest.approx(
        np.mean([x["cv_abs_confluence_error"] for x in block["images"]]))
    assert record["fitted_params_cv_abs_confluence_error"] == block["fit_cv_abs_confluence_error"]
    assert record["fitted_params_cv_iou"] == block["fit_cv_iou"]
    assert "fit_cv_abs_confluence_error" not in record


def test_calibrate_help_offers_only_what_it_can_do(cli) -> None:
    import re

    run = cli("calibrate", "--help")
    text = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout)
    assert run.code == 0 and "canny" not in text and "cellpose" not in text and "--method" not in text
    assert "--min-iou" in text


def test_size_mismatch_has_a_hint(cli, labelled: Path, tmp_path: Path) -> None:
    tifffile.imwrite(labelled / "masks" / "c1.tif", np.zeros((100, 100), np.uint8))
    run = calibrate_cli(cli, labelled, tmp_path / "p.json")
    assert run.code == 65 and "100x100" in run.stderr and "full size" in run.stderr


def test_undecodable_names_match_their_truth(cli, labelled: Path, tmp_path: Path) -> None:
    import os

    odd = os.fsdecode(b"c\xff0.tif")
    for folder in ("images", "masks"):
        (labelled / folder / "c0.tif").rename(labelled / folder / odd)
    run = calibrate_cli(cli, labelled, tmp_path / "p.json")
    assert run.code == 0, run.stderr


# -- review 13b: -o never replaces data; truth matching refuses what it cannot know -------------

def _jsonl_truth(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"schema": "monolayer.truth/1", **r}) + "\n" for r in records))
    return path


@pytest.mark.parametrize("target", ["binary", "binary_absent", "journal", "unrelated"])
def test_out_never_replaces_a_file_the_truth_names_or_any_non_params_file(
        cli, labelled: Path, tmp_path: Path, monkeypatch, target: str) -> None:
    binary = labelled / "masks" / "c0.binary.tif"
    binary.write_bytes((labelled / "masks" / "c0.tif").read_bytes())
    journal = labelled / "masks" / ".monolayer" / "outputs.list"
    journal.parent.mkdir()
    journal.write_text("c0.tif\n")
    truth = _jsonl_truth(tmp_path / "t.jsonl", [
        {"image": str(labelled / "images" / f"c{i}.tif"), "mask": str(labelled / "masks" / f"c{i}.tif"),
         "binary": str(labelled / "masks" / f"c{i}.binary.tif")} for i in range(3)])
    out = {"binary": binary, "binary_absent": labelled / "masks" / "c1.binary.tif", "journal": journal,
           "unrelated": tmp_path / "precious.txt"}[target]
    if target == "unrelated":
        out.write_text("precious\n")
    before = out.read_bytes() if out.exists() else None
    _no_work(monkeypatch)
    run = cli("calibrate", labelled / "images", "--truth", truth, "-o", out, "-q")
    assert run.code == 2 and str(out) in run.stderr, run.stderr
    assert (out.read_bytes() if out.exists() else None) == before


def test_out_may_replace_an_earlier_parameters_file(cli, labelled: Path, tmp_path: Path,
                                                    params_file: Path) -> None:
    params_file.write_text(params_file.read_text().replace('"cv_iou"', '"cv_iou_old"', 1))
    run = calibrate_cli(cli, labelled, params_file)
    assert run.code == 0, run.stderr
    assert '"cv_iou_old"' not in params_file.read_text()


def _two_days(labelled: Path, tmp_path: Path) -> tuple[Path, Path]:
    """day1/c0.tif (labelled c0) and day2/c0.tif: same name and size, other content."""
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
    (tmp_path / "day1" / "c0.tif").write_bytes((labelled / "images" / "c0.tif").read_bytes())
    other, _ = faint_cells(7, CENTERS[3])
    tifffile.imwrite(tmp_path / "day2" / "c0.tif", other)
    return tmp_path / "day1" / "c0.tif", tmp_path / "day2" / "c0.tif"


def test_a_record_whose_checksum_differs_is_never_matched_by_name(cli, labelled: Path, tmp_path: Path) -> None:
    from monolayer.commands.evaluate import load_truth

    day1, day2 = _two_days(labelled, tmp_path)
    sha1 = hashlib.sha256(day1.read_bytes()).hexdigest()
    sha2 = hashlib.sha256(day2.read_bytes()).hexdigest()
    # Named without a folder, so only the checksum tells the images apart.
    truth = _jsonl_truth(tmp_path / "t.jsonl", [{"image": "c0.tif", "image_sha256": sha1,
                                                 "mask": str(labelled / "masks" / "c0.tif")}])
    entry, why = load_truth([truth]).match(str(day2), sha2, "c0")
    assert entry is None and "checksum" in why
    run = cli("calibrate", day2, labelled / "images" / "c1.tif", labelled / "images" / "c2.tif",
              "--truth", truth, "--truth", labelled / "masks", "-o", tmp_path / "d2.json", "-q")
    assert run.code == 65 and str(day2) in run.stderr and "checksum" in run.stderr, run.stderr
    assert not (tmp_path / "d2.json").exists()
    # By path, a changed file is refused too (not matched by its old record).
    truth = _jsonl_truth(tmp_path / "t2.jsonl", [{"image": str(day2), "image_sha256": sha1,
                                                  "mask": str(labelled / "masks" / "c0.tif")}])
    entry, why = load_truth([truth]).match(str(day2), sha2, "c0")
    assert entry is None and "changed" in why


def test_a_coco_file_name_with_a_folder_matches_only_that_folder(labelled: Path, tmp_path: Path) -> None:
    from monolayer.commands.evaluate import load_truth

    day1, day2 = _two_days(labelled, tmp_path)
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "day1/c0.tif", "width": 128, "height": 128}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
                         "bbox": [10, 10, 10, 10], "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]}],
        "categories": [{"id": 1, "name": "cell"}]}))
    index = load_truth([coco])
    entry, why = index.match(str(day2), None, "c0")
    assert entry is None and "day1/c0.tif" in why
    entry, how = index.match(str(day1), None, "c0")
    assert entry is not None and how == "stem"


def test_two_truth_sources_disagreeing_on_one_checksum_are_refused(cli, labelled: Path, tmp_path: Path) -> None:
    from monolayer.commands.evaluate import load_truth

    image = labelled / "images" / "c0.tif"
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    a = _jsonl_truth(tmp_path / "a.jsonl", [{"image": str(image), "image_sha256": sha,
                                             "mask": str(labelled / "masks" / "c0.tif")}])
    b = _jsonl_truth(tmp_path / "b.jsonl", [{"image": str(image), "image_sha256": sha,
                                             "mask": str(labelled / "masks" / "c1.tif")}])
    for sources in ([a, b], [b, a]):
        entry, why = load_truth(sources).match(str(image), sha, "c0")
        assert entry is None and "cannot tell which" in why
        entry, why = load_truth(sources).match(str(image), None, "c0")  # by path: the same
        assert entry is None and "cannot tell which" in why
    entry, how = load_truth([a, a]).match(str(image), sha, "c0")  # the same truth twice: fine
    assert entry is not None and how == "sha256"
    run = cli("calibrate", labelled / "images", "--truth", a, "--truth", b, "--truth", labelled / "masks",
              "-o", tmp_path / "p.json", "-q")
    assert run.code == 65 and "cannot tell which" in run.stderr and not (tmp_path / "p.json").exists()
