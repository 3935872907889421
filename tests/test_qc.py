"""Issue 13, part 2: image-quality and domain flags on segment records, and filtering on them.

Degraded versions of the example images (made here, in their stored dtype) must raise
their flag; the originals none. Pure noise is both ``no_texture`` (nothing above the
noise at the scale of cells) and ``unlike_calibration`` (its noise, relative to its
intensity range, is far outside the development images'): both are right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from monolayer import qc
from conftest import EXAMPLES

NAMES = ("set20", "set26", "set30")


def _example(name: str) -> np.ndarray:
    return tifffile.imread(EXAMPLES / "images" / f"{name}.tif")


def _degrade(image: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
    """As benchmarks/qc_dev.py makes them, in the image's own dtype."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(image.dtype)
    f = image.astype(np.float64)
    if how == "blur":
        f = ndi.gaussian_filter(f, 4)
    elif how == "overexposed":
        f = f * info.max / np.percentile(f, 90)
    elif how == "ramp":
        f = f * np.linspace(0.7, 1.3, f.shape[1])[None, :]
    elif how == "empty":
        f = np.median(f) + rng.normal(0, qc._noise_sigma(image.astype(np.float32)), f.shape)
    elif how == "noise":
        f = np.median(f) + rng.normal(0, f.std(), f.shape)
    return np.clip(np.round(f), info.min, info.max).astype(image.dtype)


def _flags(image: np.ndarray, reference=None) -> list[str]:
    return qc.flags(qc.measure(image.astype(np.float32), image.dtype), reference)


@pytest.mark.parametrize("name", NAMES)
def test_originals_raise_no_flag(name):
    assert _flags(_example(name), qc.DEV_REFERENCE) == []


def test_the_8bit_example_raises_no_flag(image8):
    image = tifffile.imread(image8)
    assert _flags(image, qc.DEV_REFERENCE) == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how, expected", [
    ("blur", ["out_of_focus"]),
    ("overexposed", ["saturated"]),
    ("ramp", ["uneven_illumination"]),
    ("empty", ["no_texture"]),
    ("noise", ["no_texture"]),
])
def test_each_degradation_raises_its_flag(name, how, expected):
    assert _flags(_degrade(_example(name), how)) == expected


def test_pure_noise_and_empty_fields_are_also_unlike_the_development_images():
    for how in ("noise", "empty"):
        assert _flags(_degrade(_example("set20"), how), qc.DEV_REFERENCE) == ["no_texture", "unlike_calibration"]


def test_degradations_in_8bit_too(image8):
    image = tifffile.imread(image8)
    assert _flags(_degrade(image, "blur")) == ["out_of_focus"]
    assert _flags(_degrade(image, "overexposed")) == ["saturated"]
    assert _flags(_degrade(image, "ramp")) == ["uneven_illumination"]
    assert _flags(_degrade(image, "empty")) == ["no_texture"]


def test_domain_statistics_do_not_follow_confluence():
    """set30 (5 % covered) and set26 (29 %) are the same culture and microscope: a reference
    made from one image accepts the other, both ways; a 4x coarser image (another
    magnification) is unlike either."""
    sparse, dense = (qc.measure(_example(n).astype(np.float32), np.uint16) for n in ("set30", "set26"))
    assert qc.unlike(dense, qc.reference_from([sparse])) == []
    assert qc.unlike(sparse, qc.reference_from([dense])) == []
    image = _example("set20").astype(np.float32)
    coarse = image[:1020].reshape(255, 4, 256, 4).mean(axis=(1, 3))
    assert qc.unlike(qc.measure(coarse, np.float32), qc.reference_from([sparse, dense])) != []


def test_reference_from_widens_the_range_and_keeps_domain_names():
    measures = [qc.measure(_example(n).astype(np.float32), np.uint16) for n in NAMES]
    reference = qc.reference_from(measures)
    assert set(reference) == set(qc.DOMAIN)
    for name, (low, high) in reference.items():
        values = [m[name] for m in measures]
        assert low < min(values) and high > max(values)
    assert qc.check_reference(json.loads(json.dumps(reference))) == reference
    with pytest.raises(ValueError, match="expected"):
        qc.check_reference({"noise": [1, "x"]})


@pytest.mark.parametrize("image", [
    np.full((64, 64), np.nan, np.float32),
    np.zeros((1, 1), np.uint8),
    np.full((3, 200), 7, np.uint16),
    np.full((80, 80), 255, np.uint8),
    np.random.default_rng(0).random((70, 90)).astype(np.float32),
])
def test_measure_is_finite_on_odd_images(image):
    measured = qc.measure(image, image.dtype)
    assert all(np.isfinite(v) for v in measured.values())
    json.dumps(measured, allow_nan=False)
    qc.flags(measured, qc.DEV_REFERENCE)


def test_flat_image_is_saturated_only_at_its_dtypes_end():
    assert "saturated" in _flags(np.full((80, 80), 255, np.uint8))
    assert "saturated" not in _flags(np.full((80, 80), 128, np.uint8))


# CLI: records carry qc and flags; a params file's reference; stats and report filter.


def test_segment_records_carry_qc_and_flags(cli, examples, tmp_path):
    run = cli("segment", examples / "images", "-o", tmp_path / "o", "-q")
    assert run.code == 0, run.stderr
    for record in run.records:
        assert set(record["qc"]) == {"clipped_low", "clipped_high", "noise", "skew", "texture",
                                     "sharpness", "scale", "illumination", "invalid"}
        assert record["flags"] == []
    rerun = cli("segment", examples / "images", "-o", tmp_path / "o", "-q", "--skip-existing")
    assert [r["qc"] for r in rerun.records] == [r["qc"] for r in run.records]
    assert all(r.get("reused") for r in rerun.records)


def test_nan_and_infinite_pixels_are_flagged_and_counted(cli, examples, tmp_path):
    """A float image with NaN/inf pixels still gets its number, but the record says that a
    part of the field was never seen (it used to be replaced silently)."""
    image = _example(NAMES[0]).astype(np.float32)
    assert qc.measure(image, image.dtype)["invalid"] == 0.0
    holed = image.copy()
    holed[:100, :100] = np.nan
    holed[500, 500] = np.inf
    measured = qc.measure(holed, holed.dtype)
    assert measured["invalid"] == pytest.approx(10001 / holed.size, rel=1e-3)
    assert qc.flags(measured, None)[0] == "invalid_pixels"
    tifffile.imwrite(tmp_path / "holed.tif", holed)
    tifffile.imwrite(tmp_path / "whole.tif", image)
    run = cli("segment", tmp_path / "holed.tif", tmp_path / "whole.tif", "-o", tmp_path / "o", "-q")
    assert run.code == 0, run.stderr
    by_name = {Path(r["image"]).name: r for r in run.records}
    assert "invalid_pixels" in by_name["holed.tif"]["flags"] and by_name["holed.tif"]["qc"]["invalid"] > 0
    assert "invalid_pixels" not in by_name["whole.tif"]["flags"]
    kept = cli("stats", "-", "--field", "confluence", "--exclude-flag",
               "invalid_pixels", input="".join(json.dumps(r) + "\n" for r in run.records))
    assert kept.code == 0, kept.stderr
    assert kept.records[0]["n"] == 1


def test_segment_flags_a_degraded_image(cli, examples, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "blurred.tif", _degrade(_example("set20"), "blur"))
    tifffile.imwrite(folder / "empty.tif", _degrade(_example("set20"), "empty"))
    run = cli("segment", folder, "-o", tmp_path / "o", "-q")
    assert run.code == 0, run.stderr
    flags = {r["image"].rsplit("/", 1)[-1]: r["flags"] for r in run.records}
    assert "out_of_focus" in flags["blurred.tif"] and "unlike_calibration" in flags["blurred.tif"]
    assert flags["empty.tif"] == ["no_texture", "unlike_calibration"]
    assert all(isinstance(r["confluence"], float) for r in run.records)  # still given a number


def test_learned_models_without_params_get_no_domain_check():
    from monolayer.commands.segment import SegmentOptions, qc_reference

    options = SegmentOptions(out=__import__("pathlib").Path("o"))
    assert qc_reference(options, {"model": "unet", "method": None, "params": {}}) is None
    assert qc_reference(options, {"model": "classical", "method": "canny", "params": {}}) is None
    from dataclasses import asdict

    from monolayer.backends.phase import PhaseParams

    default = {"model": "classical", "method": "phase", "params": asdict(PhaseParams())}
    assert qc_reference(options, default) is qc.DEV_REFERENCE
    changed = {**default, "params": {**asdict(PhaseParams()), "t_abs": 0.05}}
    assert qc_reference(options, changed) is None
    mine = {"noise": [0.1, 0.2]}
    assert qc_reference(SegmentOptions(out=options.out, qc_reference=mine), changed) is mine


def _default_params() -> dict:
    from dataclasses import asdict

    from monolayer.backends.phase import PhaseParams

    return asdict(PhaseParams())


# What a params file needs beside its parameters (as calibrate writes it; see test_calibrate.py).
_CALIBRATION = {"calibration": {"calibrated": True, "normalize": "percentile", "resize": None}}


def test_a_params_files_reference_triggers_unlike_calibration(cli, examples, tmp_path):
    """A reference made on 8x coarser images (another magnification) does not cover the
    examples: every record says so, and still has its number. (At 4x, one of the three
    examples still falls inside the widened range of three images: the check catches
    large changes of imaging, not every change.)"""
    coarse = [_example(n).astype(np.float32)[:1016].reshape(127, 8, 128, 8).mean(axis=(1, 3)) for n in NAMES]
    reference = qc.reference_from([qc.measure(c, np.float32) for c in coarse])
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"schema": "monolayer.params/1", "model": "classical", "method": "phase",
                                  "params": _default_params(), "qc_reference": reference, "qc_version": qc.QC_VERSION,
                                  **_CALIBRATION}))
    run = cli("segment", examples / "images", "-o", tmp_path / "o", "-q", "--params", params)
    assert run.code == 0, run.stderr
    assert [r["flags"] for r in run.records] == [["unlike_calibration"]] * 3
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"schema": "monolayer.params/1", "model": "classical", "method": "phase",
                               "params": _default_params(), "qc_reference": qc.reference_from(
                                   [qc.measure(_example(n).astype(np.float32), np.uint16) for n in NAMES]),
                               "qc_version": qc.QC_VERSION, **_CALIBRATION}))
    run = cli("segment", examples / "images", "-o", tmp_path / "p", "-q", "--params", own)
    assert run.code == 0, run.stderr
    assert [r["flags"] for r in run.records] == [[]] * 3


def _flagged_records(cli, examples, tmp_path):
    run = cli("segment", examples / "images", "-o", tmp_path / "o", "-q")
    records = run.records
    records[0]["flags"] = ["saturated"]
    records[1]["flags"] = ["out_of_focus", "unlike_calibration"]
    path = tmp_path / "seg.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def test_stats_filters_on_flags(cli, examples, tmp_path):
    path, records = _flagged_records(cli, examples, tmp_path)
    c = [r["confluence"] for r in records]
    run = cli("stats", path, "-f", "confluence", "--exclude-flag", "any")
    assert run.code == 0, run.stderr
    assert run.records[0]["n"] == 1 and run.records[0]["mean"] == pytest.approx(c[2])
    assert "--exclude-flag any: left out 2 record(s)" in run.stderr
    run = cli("stats", path, "-f", "confluence", "--exclude-flag", "saturated")
    assert run.records[0]["n"] == 2 and run.records[0]["mean"] == pytest.approx((c[1] + c[2]) / 2)
    run = cli("stats", path, "-f", "confluence", "--only-flag", "unlike_calibration")
    assert run.records[0]["n"] == 1 and run.records[0]["mean"] == pytest.approx(c[1])
    run = cli("stats", path, "-f", "confluence", "--only-flag", "any", "--exclude-flag", "saturated")
    assert run.records[0]["n"] == 1 and run.records[0]["mean"] == pytest.approx(c[1])
    run = cli("stats", path, "-f", "confluence")
    assert run.records[0]["n"] == 3 and run.stderr == ""
    run = cli("stats", path, "--exclude-flag", "blurry")
    assert run.code == 2 and "unknown flag 'blurry'" in run.stderr and run.stdout == ""
    run = cli("stats", path, "-f", "confluence", "--only-flag", "no_texture")
    assert run.code == 66 and "3 left out by --only-flag no_texture" in run.stderr


def test_stats_says_when_records_carry_no_flags(cli, tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"image": "a.tif", "confluence": 0.5}\n{"image": "b.tif", "confluence": 0.7}\n')
    run = cli("stats", path, "-f", "confluence", "--exclude-flag", "any")
    assert run.code == 0 and run.records[0]["n"] == 2
    assert "2 record(s) carry no quality flags" in run.stderr and "kept, unchecked" in run.stderr


def test_report_marks_lists_and_filters_flagged_images(cli, examples, tmp_path):
    path, records = _flagged_records(cli, examples, tmp_path)
    out = tmp_path / "report.html"
    run = cli("report", path, "-o", out)
    assert run.code == 0, run.stderr
    text = out.read_text(encoding="utf-8")
    section = text[text.index("<h2>Flagged images</h2>"):text.index("<h2>Images</h2>")]
    assert records[0]["image"] in section and records[1]["image"] in section and records[2]["image"] not in section
    assert text.count("class='warn'") == 4  # two in the list, two on the thumbnails
    assert text.count("<figure class='flagged'>") == 2
    run = cli("report", path, "-o", out, "--exclude-flag", "any")
    assert run.code == 0, run.stderr
    text = out.read_text(encoding="utf-8")
    assert "Flagged images" not in text and text.count("<figure") == 1
    assert "--exclude-flag any: 2 image(s) left out" in text
    assert "--exclude-flag any: left out 2 record(s)" in run.stderr
    run = cli("report", path, "-o", out, "--only-flag", "bad")
    assert run.code == 2 and "unknown flag 'bad'" in run.stderr


# Review 13: clipping at a level, offset-invariant domain statistics, groups never vanish.


def _ramp_image(levels: int = 4096, dtype=np.uint16) -> np.ndarray:
    """Textured 12-bit-like data in a 16-bit container: cells on a background."""
    rng = np.random.default_rng(3)
    f = 1500 + 600 * ndi.gaussian_filter(rng.normal(0, 1, (256, 256)), 3) * 8 + rng.normal(0, 20, (256, 256))
    return np.clip(np.round(f), 0, levels - 1).astype(dtype)


def test_clipping_below_the_dtypes_top_is_found_despite_hot_pixels():
    image = _ramp_image()
    clip = np.percentile(image, 88)
    clipped = np.minimum(image, clip).astype(np.uint16)
    hot = clipped.copy()
    hot[5, 7] = hot[200, 100] = 4200  # hot pixels above the clipping level
    for x in (clipped, hot):
        m = qc.measure(x.astype(np.float32), np.uint16)
        assert m["clipped_high"] > 0.08 and "saturated" in qc.flags(m, None)
    assert qc.measure(image.astype(np.float32), np.uint16)["clipped_high"] < qc.CLIPPED_MAX
    low = np.maximum(image, np.percentile(image, 10)).astype(np.uint16)
    low[0, 0] = 0  # a dead pixel below the clipping level
    m = qc.measure(low.astype(np.float32), np.uint16)
    assert m["clipped_low"] > 0.06 and "saturated" in qc.flags(m, None)


def test_a_narrow_histogram_is_not_called_clipped():
    """A few coarse levels (a low-contrast 8-bit image) fall off steeply: no pile-up."""
    rng = np.random.default_rng(0)
    narrow = np.round(120 + rng.normal(0, 0.6, (256, 256))).astype(np.uint8)
    m = qc.measure(narrow.astype(np.float32), np.uint8)
    assert max(m["clipped_low"], m["clipped_high"]) < qc.CLIPPED_MAX


@pytest.mark.parametrize("shift, dtype", [(-128, np.int16), (-128.0, np.float32), (1000, np.uint16),
                                          (0, np.float64)])
def test_measures_do_not_depend_on_an_offset_or_the_dtype(image8, shift, dtype):
    image = tifffile.imread(image8)
    base = qc.measure(image.astype(np.float32), image.dtype)
    moved = (image.astype(np.float64) + shift).astype(dtype)
    measured = qc.measure(moved.astype(np.float32), moved.dtype)
    for name in qc.DOMAIN:
        assert measured[name] == pytest.approx(base[name], rel=2e-3), name
    assert qc.flags(measured, qc.DEV_REFERENCE) == qc.flags(base, qc.DEV_REFERENCE) == []


@pytest.mark.parametrize("value, dtype", [(0, np.uint8), (255, np.uint8), (7, np.uint16), (0.25, np.float32)])
def test_a_flat_image_has_no_noise_not_an_absurd_one(value, dtype):
    measured = qc.measure(np.full((96, 96), value, np.float32), dtype)
    assert measured["noise"] == 0.0 and all(abs(v) <= 1 for v in measured.values())


def test_any_matches_flags_this_version_does_not_know():
    from monolayer.commands.stats import FlagFilter

    future = {"flags": ["glare"]}
    assert not FlagFilter(exclude=("any",)).keeps(future)
    assert FlagFilter(only=("any",)).keeps(future)
    assert FlagFilter(exclude=("saturated",)).keeps(future)
    assert FlagFilter(exclude=("any",)).keeps({"flags": []})


def test_stats_reports_a_group_the_filter_emptied(cli, tmp_path):
    path = tmp_path / "seg.jsonl"
    rows = [("a/1.tif", 0.5, []), ("a/2.tif", 0.7, ["glare"]), ("b/1.tif", 0.2, ["saturated"]),
            ("b/2.tif", 0.3, ["out_of_focus"])]
    path.write_text("".join(json.dumps({"image": i, "confluence": c, "flags": f}) + "\n" for i, c, f in rows))
    run = cli("stats", path, "-f", "confluence", "--by", "image:dir", "--exclude-flag", "any")
    assert run.code == 0, run.stderr
    by_dir = {r["image:dir"]: r for r in run.records}
    assert by_dir["a"]["n"] == 1 and by_dir["a"]["mean"] == pytest.approx(0.5)
    assert by_dir["b"]["n"] == 0 and by_dir["b"]["mean"] is None
    assert "every record of 1 group(s)" in run.stderr and "image:dir 'b'" in run.stderr
    run = cli("stats", path, "-f", "confluence", "--by", "image:dir", "--exclude-flag", "any", "--format", "csv")
    assert run.stdout.splitlines()[1:] == ["a,confluence,1,0.5,,0.5,0.5,0.5,0.0,0.5,0.5",
                                           "b,confluence,0,,,,,,,,"]
    run = cli("stats", path, "-f", "confluence", "--by", "image:dir")
    assert [r["n"] for r in run.records] == [2, 2] and "group" not in run.stderr


def test_report_says_when_the_filter_left_nothing(cli, examples, tmp_path):
    path, records = _flagged_records(cli, examples, tmp_path)
    records[2]["flags"] = ["from_a_later_version"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = cli("report", path, "-o", tmp_path / "r.html", "--exclude-flag", "any")
    assert run.code == 66 and "--exclude-flag any left out all 3 segment record(s)" in run.stderr
    assert not (tmp_path / "r.html").exists()
