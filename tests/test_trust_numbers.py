"""Numbers stay honest: a value that cannot be trusted is an error record, never a number.

Probability maps and scores that are not finite probabilities, colour models read as
the wrong channels, floats beyond float32, complex pixels, devices and FIFOs, broken
or far-out COCO geometry, masks that disagree with their saved score map, and mask
folders matched by a different name rule than segment's.
"""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from monolayer.backends._base import Backend, Prediction
from monolayer.backends.unet import UNet
from monolayer.coco import CocoImage, annotation_mask, decode_counts, rasterize
from monolayer.commands.segment import _Loaded, _predict
from monolayer.errors import DataError, InternalError
from monolayer.io.images import load_image, sha256_file, to_grayscale

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "usiigaci" / "images" / "set30.tif"


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 320 x 384 uint16 piece of a real phase-contrast image (fast to segment)."""
    return tifffile.imread(EXAMPLE)[200:520, 300:684]


def confluence_of(cli, path: Path, out: Path, *args: str) -> float:
    run = cli("segment", path, "--out", out, "-q", *args)
    assert run.code == 0, run.stderr
    [record] = run.records
    return record["confluence"]


# -- entropy-rank: probability maps and confidences ---------------------------------------------


def test_rank_refuses_probability_maps_that_are_not_probabilities(cli, tmp_path):
    good = np.full((6, 6), 0.5, np.float32)
    bad_maps = {
        "nan_pixel": np.where(np.eye(6, dtype=bool), np.nan, 0.3).astype(np.float32),
        "inf_one_pixel": good.copy(),
        "minus_inf": good.copy(),
        "above_one": np.full((6, 6), 1.5, np.float32),
        "below_zero": np.full((6, 6), -0.2, np.float32),
        "bytes_0_255": np.full((6, 6), 200, np.uint8),
        "all_nan": np.full((6, 6), np.nan, np.float32),
    }
    bad_maps["inf_one_pixel"][2, 3] = np.inf
    bad_maps["minus_inf"][0, 0] = -np.inf
    records = []
    for name, prob in {"good": good, "rounding": np.full((6, 6), 1 + 1e-7, np.float32), **bad_maps}.items():
        tifffile.imwrite(tmp_path / f"{name}.prob.tif", prob)
        records.append({"image": f"{name}.tif", "model": "unet", "prob": str(tmp_path / f"{name}.prob.tif")})
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = cli("entropy-rank", tmp_path / "p.jsonl")
    assert run.code == 1
    by_image = {r["image"]: r for r in run.records}
    assert by_image["good.tif"]["rank"] == 1 and by_image["good.tif"]["entropy"] == pytest.approx(1.0)
    assert by_image["rounding.tif"]["rank"] == 2  # float rounding above 1 is still a probability
    for name in bad_maps:
        record = by_image[f"{name}.tif"]
        assert "rank" not in record and "entropy" not in record
        assert record["exit_code"] == 65
        assert str(tmp_path / f"{name}.prob.tif") in record["error"]
        assert f"{tmp_path / f'{name}.prob.tif'}" in run.stderr
    assert "NaN or infinite" in by_image["inf_one_pixel.tif"]["error"]
    assert "not probabilities" in by_image["above_one.tif"]["error"]


def test_rank_alone_with_a_nan_map_exits_65(cli, tmp_path):
    tifffile.imwrite(tmp_path / "x.prob.tif", np.full((4, 4), np.nan, np.float32))
    line = json.dumps({"image": "x.tif", "model": "unet", "prob": str(tmp_path / "x.prob.tif")})
    run = cli("entropy-rank", input=line + "\n")
    assert run.code == 65
    [record] = run.records
    assert "rank" not in record and "x.prob.tif" in record["error"]
    assert run.stderr.startswith("monolayer: error: ") and "x.prob.tif" in run.stderr


def test_rank_refuses_confidences_that_are_not_confidences(cli):
    lines = ['{"image": "ok.tif", "model": "maskrcnn", "mean_confidence": 0.4}',
             '{"image": "none.tif", "model": "maskrcnn", "mean_confidence": null}',
             '{"image": "inf.tif", "model": "maskrcnn", "mean_confidence": 1e400}',
             '{"image": "ninf.tif", "model": "maskrcnn", "mean_confidence": -1e400}',
             '{"image": "big.tif", "model": "maskrcnn", "mean_confidence": 1.5}',
             '{"image": "neg.tif", "model": "maskrcnn", "mean_confidence": -0.1}',
             '{"image": "text.tif", "model": "maskrcnn", "mean_confidence": "nan"}']
    run = cli("entropy-rank", input="\n".join(lines) + "\n")
    assert run.code == 1
    ranked = [r for r in run.records if "rank" in r]
    assert [(r["image"], r["score"]) for r in ranked] == [("none.tif", 0.0), ("ok.tif", 0.4)]
    errors = [r for r in run.records if "error" in r]
    assert len(errors) == 5 and all(r["exit_code"] == 65 for r in errors)
    assert all("mean_confidence" in r["error"] for r in errors)
    assert run.stderr.count("monolayer: error: ") == 5


# -- segment: a backend's non-finite score map is a failure --------------------------------------


class FixedScore(Backend):
    """Returns a prepared score map (thresholded at 0.5) whatever the image."""

    name = "fixed"

    def __init__(self, score: np.ndarray) -> None:
        self.score = score

    def predict(self, image: np.ndarray) -> Prediction:
        score = np.resize(self.score, image.shape).astype(self.score.dtype)
        return Prediction(mask=score >= 0.5, score=score, threshold=0.5)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name}


def _loaded(shape=(8, 8)) -> _Loaded:
    from monolayer.commands.segment import Job

    job = Job(0, "img.tif", "/x/img.tif", "img")
    return _Loaded(0, job, "0" * 64, np.random.default_rng(0).random(shape, dtype=np.float32), 0.0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1.5, -0.5])
def test_a_score_map_that_is_not_a_probability_fails_that_image(value):
    score = np.full((8, 8), 0.2, np.float32)
    score[3, 4] = value  # one pixel is enough
    [result] = _predict(FixedScore(score), [_loaded()])
    assert isinstance(result, InternalError) and result.exit_code == 70
    assert "img.tif" in str(result)
    [fine] = _predict(FixedScore(np.full((8, 8), 0.7, np.float32)), [_loaded()])
    assert isinstance(fine, Prediction) and fine.mask.all()


def save_unet(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(UNet(base_channels=4).state_dict(), path)
    return path


def test_segment_records_a_nan_score_map_as_an_error_not_a_confluence(cli, tmp_path, crop, monkeypatch):
    from monolayer.backends.unet import UNetBackend

    tifffile.imwrite(tmp_path / "a.tif", crop[:, :-16])  # told apart from b.tif by its width
    tifffile.imwrite(tmp_path / "b.tif", crop)
    weights = save_unet(tmp_path / "u.pt")
    forward = UNetBackend._forward

    def nan_in_a(self: UNetBackend, batch: np.ndarray) -> np.ndarray:
        prob = forward(self, batch)
        if batch.shape[-1] == crop.shape[1] - 16:
            prob[:, 5, 7] = np.nan  # one pixel
        return prob

    monkeypatch.setattr(UNetBackend, "_forward", nan_in_a)
    run = cli("segment", tmp_path / "a.tif", tmp_path / "b.tif", "-m", "unet", "-w", weights,
              "--device", "cpu", "--out", tmp_path / "o", "--save-prob")
    assert run.code == 1, run.stderr
    first, second = run.records
    assert first["exit_code"] == 70 and "NaN or infinite" in first["error"] and "confluence" not in first
    assert "NaN or infinite" in run.stderr and str(tmp_path / "a.tif") in run.stderr
    assert not (tmp_path / "o" / "a.mask.tif").exists()
    assert "error" not in second and (tmp_path / "o" / "b.mask.tif").exists()


# -- segment --resize: the saved mask is the saved score thresholded ----------------------------


@pytest.mark.parametrize("quantile", [0.3, 0.65])
def test_resized_unet_mask_is_exactly_the_saved_prob_thresholded(cli, tmp_path, crop, quantile):
    tifffile.imwrite(tmp_path / "a.tif", crop)
    weights = save_unet(tmp_path / "u.pt", seed=3)
    options = ["-m", "unet", "-w", weights, "--device", "cpu", "--resize", "96", "--save-prob"]
    first = cli("segment", tmp_path / "a.tif", *options, "--out", tmp_path / "first")
    assert first.code == 0, first.stderr
    # A threshold inside this untrained model's range, so the mask has both values.
    threshold = f"{np.quantile(tifffile.imread(first.records[0]['prob']), quantile):.7f}"
    run = cli("segment", tmp_path / "a.tif", *options, "--threshold", threshold, "--out", tmp_path / "o")
    assert run.code == 0, run.stderr
    [record] = run.records
    mask, prob = tifffile.imread(record["mask"]), tifffile.imread(record["prob"])
    assert mask.shape == prob.shape == crop.shape
    np.testing.assert_array_equal(mask > 0, prob >= float(threshold))
    assert 0 < (mask > 0).mean() < 1  # the check compares something
    assert record["confluence"] == (prob >= float(threshold)).mean()


def test_resized_classical_mask_is_exactly_the_saved_score_thresholded(cli, tmp_path, crop):
    tifffile.imwrite(tmp_path / "a.tif", crop)
    run = cli("segment", tmp_path / "a.tif", "--resize", "100", "--save-prob", "--out", tmp_path / "o")
    assert run.code == 0, run.stderr
    [record] = run.records
    mask, prob = tifffile.imread(record["mask"]), tifffile.imread(record["prob"])
    np.testing.assert_array_equal(mask > 0, prob >= 0.5)
    assert 0 < (mask > 0).mean() < 1


def test_a_mask_not_defined_by_its_score_is_still_scaled_on_its_own():
    from monolayer.commands.segment import _at_original_size

    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    prediction = Prediction(mask=mask, score=np.full((4, 4), 0.9, np.float32))  # no threshold
    back = _at_original_size(prediction, (8, 8))
    assert back.mask.shape == (8, 8) and not back.mask.all() and back.mask[3:5, 3:5].all()


# -- images: colour models, float ranges, complex pixels, devices --------------------------------


def test_cmyk_jpeg_is_read_as_pillows_luminance(cli, tmp_path, crop):
    gray = (crop / crop.max() * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=95)
    Image.fromarray(gray).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
        expected = np.asarray(img.convert("L"))
    np.testing.assert_array_equal(load_image(tmp_path / "cmyk.jpg").array, expected)
    base = confluence_of(cli, tmp_path / "gray.jpg", tmp_path / "o1")
    cmyk = confluence_of(cli, tmp_path / "cmyk.jpg", tmp_path / "o2")
    assert base > 0.05 and abs(cmyk - base) < 0.01


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "HSV", "RGBX", "RGBa", "PA", "I;16N", "LAB", "La"])
def test_every_other_pillow_mode_is_converted_as_pillow_does(tmp_path, monkeypatch, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8))
    img = {"PA": lambda: rgb.convert("RGBA").convert("PA"), "La": lambda: rgb.convert("LA").convert("La"),
           "LAB": lambda: Image.fromarray(np.asarray(rgb), "LAB")}.get(mode, lambda: rgb.convert(mode))()
    # Pillow's luminance, through RGB or LA where it has no direct conversion to "L".
    expected = {"I;16N": lambda: np.asarray(img, dtype=np.uint16),
                "LAB": lambda: np.asarray(img.convert("RGB").convert("L")),
                "La": lambda: np.asarray(img.convert("LA").convert("L"))}.get(
        mode, lambda: np.asarray(img.convert("L")))()
    # Files in these modes are rare; hand the decoded image to the reader as Pillow would.
    import PIL.Image

    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: img)
    np.testing.assert_array_equal(load_image(tmp_path / "x.png").array, expected)


def test_a_pillow_mode_without_a_luminance_is_refused(tmp_path, monkeypatch):
    import PIL.Image

    def no_conversion(*args: Any) -> Any:
        raise ValueError("conversion not supported")

    lab = Image.new("LAB", (4, 4))
    lab.convert = no_conversion  # a mode Pillow cannot convert at all
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: lab)
    with pytest.raises(DataError, match="colour mode LAB"):
        load_image(tmp_path / "x.png")


def test_cmyk_tiff_is_read_as_pillows_luminance(cli, tmp_path, crop):
    gray = (crop / crop.max() * 255).astype(np.uint8)
    cmyk = np.array(Image.fromarray(gray).convert("CMYK"))
    cmyk[::7, ::5, 3] = 40  # some black ink too
    expected = np.asarray(Image.fromarray(cmyk, "CMYK").convert("L"))
    tifffile.imwrite(tmp_path / "contig.tif", cmyk, photometric="separated")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(cmyk, -1, 0), photometric="separated",
                     planarconfig="separate")
    tifffile.imwrite(tmp_path / "gray.tif", expected)
    for name in ("contig.tif", "planar.tif"):
        np.testing.assert_array_equal(load_image(tmp_path / name).array, expected)
    base = confluence_of(cli, tmp_path / "gray.tif", tmp_path / "o0")
    assert base > 0.02
    assert confluence_of(cli, tmp_path / "contig.tif", tmp_path / "o1") == base


def test_odd_tiff_colour_models_are_refused_clearly(cli, tmp_path):
    rng = np.random.default_rng(2)
    tifffile.imwrite(tmp_path / "cmyk16.tif", rng.integers(0, 65535, (8, 8, 4), dtype=np.uint16),
                     photometric="separated")
    tifffile.imwrite(tmp_path / "one_ink.tif", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    with tifffile.TiffFile(tmp_path / "one_ink.tif", mode="r+b") as tif:  # tifffile writes no such file
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(5)
    tifffile.imwrite(tmp_path / "not_cmyk_inks.tif", rng.integers(0, 255, (8, 8, 4), dtype=np.uint8),
                     photometric="separated", extratags=[(332, "H", 1, 2, True)])
    tifffile.imwrite(tmp_path / "lab.tif", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
                     photometric="cielab")
    run = cli("segment", tmp_path / "cmyk16.tif", tmp_path / "one_ink.tif", tmp_path / "not_cmyk_inks.tif",
              tmp_path / "lab.tif", "--out", tmp_path / "o")
    assert run.code == 65
    records = {Path(r["image"]).name: r for r in run.records}
    assert all("confluence" not in r and r["exit_code"] == 65 for r in records.values())
    assert "8-bit" in records["cmyk16.tif"]["error"]
    assert "SEPARATED" in records["one_ink.tif"]["error"]
    assert "CIELAB" in records["lab.tif"]["error"]
    assert "inks other than CMYK" in records["not_cmyk_inks.tif"]["error"]
    assert "cmyk16.tif" in run.stderr


def test_extreme_float_ranges_give_the_unscaled_confluence(cli, tmp_path, crop):
    image = crop.astype(np.float64)
    tifffile.imwrite(tmp_path / "base.tif", image)
    base = confluence_of(cli, tmp_path / "base.tif", tmp_path / "o")
    assert base > 0.05
    hot = image.copy()
    hot[10, 10] = 1e300  # one hot pixel must not flatten the rest
    exact = {"pow2_up": image * 2.0**1000, "pow2_down": image * 2.0**-1000,
             "f32_pow2": (image * 2.0**100).astype(np.float32), "hot": hot}
    close = {"times_1e300": image * 1e300, "times_1e-300": image * 1e-300,
             "f32_times_1e33": (image * 1e33).astype(np.float32),
             "f32_times_1e-35": (image * 1e-35).astype(np.float32)}
    for name, array in {**exact, **close}.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", array)
        value = confluence_of(cli, tmp_path / f"{name}.tif", tmp_path / name)
        if name in exact:
            assert value == base, name
        else:  # a decimal scale rounds every pixel; a few edge pixels in 120,000 may move
            assert abs(value - base) < 1e-4, name
    ordinary = (image / 65535).astype(np.float32)
    np.testing.assert_array_equal(to_grayscale(ordinary), ordinary)  # ordinary floats untouched


def test_float_inf_and_nan_survive_rescaling_as_missing_pixels():
    a = np.linspace(0, 1, 400).reshape(20, 20) * 1e300
    a[0, 0], a[1, 1] = np.inf, np.nan
    gray = to_grayscale(a)
    assert gray.dtype == np.float32 and np.isinf(gray[0, 0]) and np.isnan(gray[1, 1])
    assert np.isfinite(gray[2:]).all() and gray[2:].max() <= 1 and gray[19, 19] > 0.5


def test_non_numeric_pixels_are_refused(cli, tmp_path, crop):
    tifffile.imwrite(tmp_path / "complex.tif", crop.astype(np.complex64) * (1 + 1j))
    run = cli("segment", tmp_path / "complex.tif", "--out", tmp_path / "o")
    assert run.code == 65
    [record] = run.records
    assert "complex" in record["error"] and "confluence" not in record
    assert run.stderr.startswith("monolayer: error: ") and "complex" in run.stderr
    for array in (np.ones((4, 4), np.complex128), np.array([[object()] * 2] * 2),
                  np.zeros((4, 4), dtype=[("a", "u1"), ("b", "f4")])):
        with pytest.raises(DataError, match="not intensities"):
            to_grayscale(array)


def test_devices_and_fifos_are_refused_before_anything_reads_them(cli, tmp_path, crop):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    tifffile.imwrite(tmp_path / "ok.tif", crop)
    run = cli("segment", "/dev/zero", fifo, "/dev/null", tmp_path / "ok.tif", "--out", tmp_path / "o",
              "--skip-existing")
    assert run.code == 1
    records = {r["image"]: r for r in run.records}
    for name in ("/dev/zero", str(fifo), "/dev/null"):
        assert records[name]["exit_code"] == 65 and "not a regular file" in records[name]["error"]
        assert f"{name}: not a regular file" in run.stderr
    assert records[str(tmp_path / "ok.tif")]["confluence"] > 0
    # Named on stdin (not expanded as arguments), the reader refuses them itself.
    piped = cli("segment", "-", "--out", tmp_path / "o2", input=f"/dev/zero\n{fifo}\n")
    assert piped.code == 65 and all("not a regular file" in r["error"] for r in piped.records)
    for reader in (load_image, sha256_file):
        for path in (Path("/dev/zero"), fifo):
            with pytest.raises(DataError, match="not a regular file"):
                reader(path)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# -- COCO: compressed RLE, polygons far out, memory --------------------------------------------


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts: column-major runs, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def test_compressed_rle_decoder_agrees_with_pycocotools_encoder():
    rng = np.random.default_rng(7)
    shapes = [(1, 1), (3, 5), (40, 37), (64, 64), (300, 2)]
    for h, w in shapes:
        for density in (0.0, 0.02, 0.5, 0.97, 1.0):
            mask = rng.random((h, w)) < density
            if density == 0.5:  # long runs too (multi-character numbers, negative deltas)
                mask = np.zeros((h, w), bool)
                mask.ravel()[rng.integers(0, h * w):] = True
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert decode_counts(rle["counts"]).tolist() == _runs(mask)
            assert decode_counts(rle["counts"].decode()).tolist() == _runs(mask)
            got = annotation_mask({"segmentation": {"size": [h, w], "counts": rle["counts"].decode()}}, h, w, "x")
            np.testing.assert_array_equal(got, mask)


def _encode_runs(runs: list[int]) -> str:
    """pycocotools' rleToString for any (also invalid) runs: to forge broken strings."""
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as on C's long
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_broken_compressed_rle_is_an_error_for_that_annotation(cli, tmp_path):
    h, w = 6, 5
    assert _encode_runs([3, 4, 23]) == mask_utils.encode(
        np.asfortranarray(np.array([0] * 3 + [1] * 4 + [0] * 23, np.uint8).reshape((h, w), order="F"))
    )["counts"].decode()
    broken = {"short": _encode_runs([3, 4, 20]), "long": _encode_runs([3, 4, 30]),
              "negative": _encode_runs([3, 10, -5, 22]), "empty": "",
              "unfinished": _encode_runs([3, 4, 23]) + "a", "bad_char": "3\x7f", "non_ascii": "3é"}
    for name, counts in broken.items():
        with pytest.raises(DataError, match="annotation 9"):
            rasterize(CocoImage(1, "x.tif", w, h, [{"id": 9, "segmentation": {"size": [h, w], "counts": counts}}]))
    doc = {"images": [{"id": 1, "file_name": "bad.tif", "width": w, "height": h},
                      {"id": 2, "file_name": "good.tif", "width": w, "height": h}],
           "annotations": [{"id": 5, "image_id": 1, "segmentation": {"size": [h, w], "counts": broken["negative"]}},
                           {"id": 6, "image_id": 2, "segmentation": {"size": [h, w], "counts": _encode_runs([3, 4, 23])}}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    run = cli("coco2mask", tmp_path / "c.json", "--out", tmp_path / "o")
    assert run.code == 1
    bad, good = run.records
    assert bad["exit_code"] == 65 and "annotation 5" in bad["error"] and "negative" in bad["error"]
    assert "annotation 5" in run.stderr
    assert good["instances"] == 1 and good["confluence"] == 4 / 30


def _poly_mask(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    return annotation_mask({"segmentation": polygons}, h, w, "x")


def test_far_out_polygon_vertices_are_clipped_not_crashing():
    h, w = 40, 50
    huge_square = [-1e12, -1e12, 1e12, -1e12, 1e12, 1e12, -1e12, 1e12]
    assert _poly_mask([huge_square], h, w).all()
    moderate_square = [-5.0, -5.0, w + 5.0, -5.0, w + 5.0, h + 5.0, -5.0, h + 5.0]
    assert _poly_mask([moderate_square], h, w).all()
    # A triangle reaching 1e12 px to the right: in the image it is the band x >= 10, 10 <= y <= 30
    # (its slanted side drops 20 px over 1e12 px: 1e-9 px across the image).
    triangle = [10.0, 10.0, 1e12, 10.0, 10.0, 30.0]
    band = [10.0, 10.0, w + 1.0, 10.0, w + 1.0, 30.0, 10.0, 30.0]
    expected = mask_utils.decode(mask_utils.frPyObjects([band], h, w)[0]).astype(bool)
    np.testing.assert_array_equal(_poly_mask([triangle], h, w), expected)
    # Entirely outside: nothing; together with a part inside: only that part.
    outside = [1e9, 1e9, 2e9, 1e9, 2e9, 2e9]
    assert not _poly_mask([outside], h, w).any()
    inside = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]
    direct = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([inside], h, w))).astype(bool)
    np.testing.assert_array_equal(_poly_mask([outside, inside], h, w), direct)
    np.testing.assert_array_equal(_poly_mask([inside], h, w), direct)  # ordinary data: unchanged
    for value in (1e16, -1e300):
        with pytest.raises(DataError, match="coordinate beyond"):
            _poly_mask([[0.0, 0.0, value, 0.0, 5.0, 5.0]], h, w)


def test_coco2mask_survives_a_polygon_at_1e300(cli, tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.tif", "width": 20, "height": 10},
                      {"id": 2, "file_name": "b.tif", "width": 20, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "segmentation": [[0, 0, 1e300, 0, 5, 5]]},
                           {"id": 2, "image_id": 2, "segmentation": [[-1e9, -1e9, 1e9, -1e9, 0, 1e9]]}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    run = cli("coco2mask", tmp_path / "c.json", "--out", tmp_path / "o")
    assert run.code == 1
    bad, good = run.records
    assert bad["exit_code"] == 65 and "annotation 1" in bad["error"]
    assert good["confluence"] == 1.0  # the huge triangle covers the whole image


def _old_rasterize(image: CocoImage, lazy: bool = False) -> tuple[np.ndarray, int, int]:
    """The decode-everything-first algorithm this module used before, kept as the reference."""
    from monolayer.coco import merge_touching

    decoded = []
    for k, ann in enumerate(image.annotations):
        mask = annotation_mask(ann, image.height, image.width, "x")
        decoded.append((ann.get("id", k), mask, bool(ann.get("iscrowd", 0))))

    def id_key(item: Any) -> tuple[int, Any]:
        ann_id = item[0]
        return (0, ann_id) if isinstance(ann_id, (int, float)) else (1, str(ann_id))

    ordered = sorted(decoded, key=id_key)
    labels = np.zeros((image.height, image.width), dtype=np.uint32)
    for i in sorted(range(len(ordered)), key=lambda i: (-int(ordered[i][1].sum()), id_key(ordered[i]))):
        labels[ordered[i][1]] = i + 1
    crowd = sum(1 for _, _, c in ordered if c)
    if lazy:
        labels = merge_touching(labels, [m for _, m, _ in ordered])
        return labels, int(labels.max()), crowd
    return labels, len(np.unique(labels)) - (1 if (labels == 0).any() else 0), crowd


def _random_annotations(rng: np.random.Generator, h: int, w: int, n: int) -> list[dict[str, Any]]:
    anns: list[dict[str, Any]] = []
    for k in range(n):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.choice([3.0, 3.0, 6.0, 12.0])
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        poly = np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)]).ravel().tolist()
        kind = k % 4
        ann: dict[str, Any] = {"id": [k, f"s{k}", k // 2][k % 3] if k % 5 else 7, "iscrowd": int(k % 7 == 0)}
        if kind == 0:
            ann["segmentation"] = [poly]
        elif kind == 1:  # two parts
            ann["segmentation"] = [poly, (np.array(poly) + [r * 3, 0] * 10).tolist()]
        else:
            mask = _poly_mask([poly], h, w)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            counts = rle["counts"].decode() if kind == 2 else _runs(mask)
            ann["segmentation"] = {"size": [h, w], "counts": counts}
        anns.append(ann)
    return anns


def test_rasterize_gives_the_same_labels_as_decoding_everything_first():
    rng = np.random.default_rng(11)
    for trial in range(4):
        h, w = 60 + trial, 80
        image = CocoImage(1, "x.tif", w, h, _random_annotations(rng, h, w, 40))
        for lazy in (False, True):
            new = rasterize(image, lazy=lazy)
            labels, instances, crowd = _old_rasterize(image, lazy=lazy)
            np.testing.assert_array_equal(new.labels, labels)
            assert (new.instances, new.crowd) == (instances, crowd)


def test_rasterize_memory_does_not_grow_with_the_number_of_annotations():
    rng = np.random.default_rng(5)
    h, w = 520, 704
    anns = []
    for k in range(1500):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        anns.append({"id": k, "segmentation": [
            np.column_stack([cx + 9 * np.cos(angles), cy + 9 * np.sin(angles)]).ravel().tolist()]})
    image = CocoImage(1, "x.tif", w, h, anns)
    tracemalloc.start()
    try:  # lazy labels paint every instance, then visit every instance again
        lazy = rasterize(image, lazy=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 60 * 2**20, f"peak {peak / 2**20:.0f} MB"
    exact = rasterize(image)
    assert exact.instances > 1000 and 10 < lazy.instances < exact.instances
    np.testing.assert_array_equal(lazy.labels > 0, exact.labels > 0)


# -- evaluate: mask folders matched by segment's stem rule -------------------------------------


def test_evaluate_matches_mask_folders_by_segments_name_rule(cli, tmp_path, crop):
    plate, truth = tmp_path / "plate", tmp_path / "truth"
    plate.mkdir()
    truth.mkdir()
    tifffile.imwrite(plate / "well A1.tif", crop)
    tifffile.imwrite(plate / "well_B1.tif", crop[::-1])
    seg = cli("segment", plate, "--out", tmp_path / "pred")
    assert seg.code == 0, seg.stderr
    masks = {Path(r["image"]).name: Path(r["mask"]) for r in seg.records}
    assert masks["well A1.tif"].name == "well_A1.mask.tif"
    # The truth folder names masks after the images: 'well A1.tif' keeps its space.
    tifffile.imwrite(truth / "well A1.tif", tifffile.imread(masks["well A1.tif"]))
    tifffile.imwrite(truth / "well_B1.tif", tifffile.imread(masks["well_B1.tif"]))
    (tmp_path / "p.jsonl").write_text(seg.stdout)
    for predictions in (tmp_path / "pred", tmp_path / "p.jsonl"):
        run = cli("evaluate", predictions, "--truth", truth)
        assert run.code == 0, run.stderr
        assert sorted((Path(r["truth"]).name, r["iou"]) for r in run.records) == [
            ("well A1.tif", 1.0), ("well_B1.tif", 1.0)]


def test_evaluate_refuses_to_guess_between_two_names_of_one_stem(cli, tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    pred.mkdir()
    tifffile.imwrite(truth / "well A1.tif", np.ones((4, 4), np.uint8))
    tifffile.imwrite(truth / "well_A1.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(pred / "well_A1.mask.tif", np.ones((4, 4), np.uint8))
    run = cli("evaluate", pred, "--truth", truth, "--allow-missing")
    assert run.code != 0
    [record] = run.records
    assert "iou" not in record and "cannot tell which" in record["error"]
    # Two prediction masks of one stem are not scored either: either could be the other.
    tifffile.imwrite(pred / "well A1.mask.tif", np.zeros((4, 4), np.uint8))
    (truth / "well A1.tif").unlink()
    run = cli("evaluate", pred, "--truth", truth, "--allow-missing")
    assert run.code != 0
    assert len(run.records) == 2 and all("cannot tell which" in r["error"] for r in run.records)


# -- images: palette, MINISWHITE, planar RGB, large offsets, float16 --------------------------


def quiet_confluence(cli, path: Path, out: Path) -> float:
    """The confluence segment reports for ``path``: exit 0 and not a word on stderr."""
    run = cli("segment", path, "--out", out, "-q")
    assert run.code == 0 and run.stderr == "", run.stderr
    [record] = run.records
    return record["confluence"]


def gray8(crop: np.ndarray) -> np.ndarray:
    return (crop / crop.max() * 255).astype(np.uint8)


def test_palette_tiff_is_read_as_its_colours_and_a_palette_mask_as_its_labels(cli, tmp_path, crop):
    gray = gray8(crop)
    index = 255 - gray  # indices that are not the intensities: a reversed gray ramp
    ramp = (255 - np.arange(256)) * 257
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette",
                     colormap=np.stack([ramp] * 3).astype(np.uint16))
    png = Image.fromarray(index, "P")
    png.putpalette(np.stack([ramp // 257] * 3, -1).astype(np.uint8).ravel().tolist())
    png.save(tmp_path / "pal.png")
    # A coloured palette: its luminance, as the same palette saved as PNG gives.
    colours = np.stack([ramp // 257, ramp // 514, 255 - ramp // 257])  # 8-bit colours, as PNG holds
    tifffile.imwrite(tmp_path / "colour.tif", index, photometric="palette",
                     colormap=(colours * 257).astype(np.uint16))
    png.putpalette(colours.T.astype(np.uint8).ravel().tolist())
    png.save(tmp_path / "colour.png")
    base = quiet_confluence(cli, tmp_path / "gray.tif", tmp_path / "o0")
    assert base > 0.05
    assert quiet_confluence(cli, tmp_path / "pal.tif", tmp_path / "o1") == base
    assert quiet_confluence(cli, tmp_path / "pal.png", tmp_path / "o2") == base
    coloured = quiet_confluence(cli, tmp_path / "colour.tif", tmp_path / "o3")
    assert abs(coloured - quiet_confluence(cli, tmp_path / "colour.png", tmp_path / "o4")) < 1e-3
    # As a mask, the indices are the labels: index 0 painted white is still background.
    seg = cli("segment", tmp_path / "gray.tif", "--out", tmp_path / "pred")
    mask = tifffile.imread(seg.records[0]["mask"])
    truth = tmp_path / "truth"
    truth.mkdir()
    white_background = np.zeros((3, 256), np.uint16)
    white_background[:, 0] = 65535
    tifffile.imwrite(truth / "gray.tif", mask, photometric="palette", colormap=white_background)
    paletted = Image.fromarray(mask, "P")
    paletted.putpalette([255, 255, 255, 0, 0, 0])
    (tmp_path / "png_truth").mkdir()
    paletted.save(tmp_path / "png_truth" / "gray.png")
    for folder in (truth, tmp_path / "png_truth"):
        run = cli("evaluate", tmp_path / "pred", "--truth", folder)
        assert run.code == 0, run.stderr
        [record] = run.records
        assert record["iou"] == 1.0 and record["confluence_true"] == base


def test_miniswhite_tiff_is_inverted_for_images_not_for_masks(cli, tmp_path, crop):
    gray = gray8(crop)
    tifffile.imwrite(tmp_path / "gray8.tif", gray)
    tifffile.imwrite(tmp_path / "white8.tif", 255 - gray, photometric="miniswhite")
    tifffile.imwrite(tmp_path / "gray16.tif", crop)
    tifffile.imwrite(tmp_path / "white16.tif", 65535 - crop, photometric="miniswhite")
    base8 = quiet_confluence(cli, tmp_path / "gray8.tif", tmp_path / "o0")
    assert base8 > 0.05
    assert quiet_confluence(cli, tmp_path / "white8.tif", tmp_path / "o1") == base8
    assert quiet_confluence(cli, tmp_path / "white16.tif", tmp_path / "o2") == quiet_confluence(
        cli, tmp_path / "gray16.tif", tmp_path / "o3")
    seg = cli("segment", tmp_path / "gray8.tif", "--out", tmp_path / "pred")
    truth = tmp_path / "truth"
    truth.mkdir()
    tifffile.imwrite(truth / "gray8.tif", tifffile.imread(seg.records[0]["mask"]), photometric="miniswhite")
    run = cli("evaluate", tmp_path / "pred", "--truth", truth)
    assert run.code == 0, run.stderr
    assert run.records[0]["iou"] == 1.0 and run.records[0]["confluence_true"] == base8


def test_a_large_offset_gives_the_confluence_of_the_picture_without_it(cli, tmp_path, crop):
    tifffile.imwrite(tmp_path / "plain.tif", crop)
    base = quiet_confluence(cli, tmp_path / "plain.tif", tmp_path / "o")
    assert base > 0.05
    wide = crop.astype(np.int64)
    hot = wide + 2**40
    hot[5, 5] = 2**62  # one hot pixel must not bring the flattening back
    nan = crop.astype(np.float64) + 1e12
    nan[7, 7] = np.nan
    offsets = {"int64": wide + 2**40, "int64_hot": hot, "uint64": crop.astype(np.uint64) + np.uint64(2**63),
               "int64_low": wide - 2**62 - 2**62 + 70000, "int32": (wide + 2**30).astype(np.int32),
               "float64": crop.astype(np.float64) + 1e12, "float64_nan": nan,
               "rgb_int64": np.stack([wide + 2**40] * 3, -1)}
    for name, array in offsets.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", array, photometric="rgb" if array.ndim == 3 else None)
        assert abs(quiet_confluence(cli, tmp_path / f"{name}.tif", tmp_path / name) - base) < 1e-3, name
    # Ordinary images are cast exactly as before.
    for array in (crop, gray8(crop), crop.astype(np.int32), crop.astype(np.float64) / 65535):
        np.testing.assert_array_equal(to_grayscale(array), array.astype(np.float32))


def test_planar_rgb_tiff_is_read_as_rgb(cli, tmp_path, crop):
    rgb = np.stack([gray8(crop)] * 3, -1)
    tifffile.imwrite(tmp_path / "gray.tif", gray8(crop))
    tifffile.imwrite(tmp_path / "contig.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(load_image(tmp_path / "planar.tif").array, rgb)
    base = quiet_confluence(cli, tmp_path / "gray.tif", tmp_path / "o0")
    assert base > 0.05
    assert quiet_confluence(cli, tmp_path / "contig.tif", tmp_path / "o1") == base
    assert quiet_confluence(cli, tmp_path / "planar.tif", tmp_path / "o2") == base


def test_float16_tiff_is_read_without_warnings(cli, tmp_path, crop):
    gray = gray8(crop)
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    tifffile.imwrite(tmp_path / "half.tif", gray.astype(np.float16))  # exact: 0..255 fit float16
    tifffile.imwrite(tmp_path / "half_unit.tif", (crop / 65535).astype(np.float16))
    tifffile.imwrite(tmp_path / "plain16.tif", crop)
    base = quiet_confluence(cli, tmp_path / "gray.tif", tmp_path / "o0")
    assert quiet_confluence(cli, tmp_path / "half.tif", tmp_path / "o1") == base
    assert abs(quiet_confluence(cli, tmp_path / "half_unit.tif", tmp_path / "o2")
               - quiet_confluence(cli, tmp_path / "plain16.tif", tmp_path / "o3")) < 1e-3
    top = np.array([[0, 1000, 65504, np.inf]], np.float16)
    np.testing.assert_array_equal(to_grayscale(top), top.astype(np.float32))


def test_two_unnamed_channels_are_refused_alpha_is_dropped(cli, tmp_path):
    import tifffile as tf

    gray = tf.imread(EXAMPLE)[:256, :256]
    tf.imwrite(tmp_path / "two.tif", np.stack([np.zeros_like(gray), gray]), photometric="minisblack",
               planarconfig="separate")
    tf.imwrite(tmp_path / "alpha.tif", np.stack([gray, np.full_like(gray, 65535)], axis=-1),
               photometric="minisblack", extrasamples=[2])
    tf.imwrite(tmp_path / "plain.tif", gray)
    run = cli("segment", tmp_path / "two.tif", tmp_path / "alpha.tif", tmp_path / "plain.tif", "-o", tmp_path / "o")
    assert run.code == 1
    two, alpha, plain = run.records
    assert two["exit_code"] == 65 and "2 channels" in two["error"] and "two.tif" in two["error"]
    assert alpha["confluence"] == plain["confluence"]


def test_exif_orientation_is_applied_as_a_viewer_shows_the_image(cli, tmp_path):
    from PIL import Image as PILImage

    gray = tifffile.imread(EXAMPLE)[:256, :320].astype(float)
    eight = np.clip((gray - np.percentile(gray, 0.5)) / np.ptp(np.percentile(gray, [0.5, 99.5])) * 255, 0, 255)
    eight = eight.astype(np.uint8)
    PILImage.fromarray(eight).save(tmp_path / "up.png")
    exif = PILImage.Exif()
    exif[0x0112] = 3  # stored upside down, shown upright
    PILImage.fromarray(eight[::-1, ::-1].copy()).save(tmp_path / "turned.png", exif=exif)
    run = cli("segment", tmp_path / "up.png", tmp_path / "turned.png", "-o", tmp_path / "o", "-q")
    assert run.code == 0
    up, turned = (tifffile.imread(r["mask"]) for r in run.records)
    assert up.shape == turned.shape == (256, 320) and np.array_equal(up, turned)


def test_an_image_too_small_for_the_method_is_an_error_not_zero(cli, tmp_path):
    strip = tifffile.imread(EXAMPLE)[:16]
    tifffile.imwrite(tmp_path / "strip.tif", strip)
    PILImage = __import__("PIL.Image", fromlist=["Image"])
    PILImage.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    run = cli("segment", tmp_path / "strip.tif", tmp_path / "dot.png", "-o", tmp_path / "o")
    assert run.code == 65
    assert all("too small for model classical" in r["error"] for r in run.records)
