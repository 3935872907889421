"""COCO rasterisation: polygons, RLE, iscrowd, overlaps, lazy labels, broken input, safe names."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from monolayer.coco import CocoImage, annotation_mask, load_coco, rasterize, safe_stem
from monolayer.errors import DataError


def square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def image(anns, h=20, w=30):
    return CocoImage(id=1, file_name="a.tif", width=w, height=h, annotations=anns)


def test_polygon_with_two_parts_is_one_instance():
    ann = {"id": 1, "segmentation": [square(0, 0, 4, 4), square(10, 10, 14, 14)]}
    r = rasterize(image([ann]))
    assert r.instances == 1
    assert set(np.unique(r.labels)) == {0, 1}
    assert (r.labels > 0).sum() == 2 * (r.labels[0:5, 0:5] > 0).sum()


def test_overlap_smaller_instance_keeps_its_pixels_whatever_the_order():
    big = {"id": 1, "segmentation": [square(0, 0, 20, 15)]}
    small = {"id": 2, "segmentation": [square(5, 5, 8, 8)]}
    for anns in ([big, small], [small, big]):
        r = rasterize(image(anns))
        assert r.labels[6, 6] == 2 and r.labels[1, 1] == 1
        # Confluence is the union: overlap counted once.
        union = annotation_mask(big, 20, 30, "x") | annotation_mask(small, 20, 30, "x")
        assert np.array_equal(r.labels > 0, union)


def test_compressed_and_uncompressed_rle_and_crowd():
    truth = np.zeros((20, 30), np.uint8, order="F")
    truth[2:9, 3:12] = 1
    compressed = mask_utils.encode(truth)
    compressed["counts"] = compressed["counts"].decode("ascii")
    # Uncompressed RLE: column-major run lengths starting with background.
    flat = truth.ravel(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run); current, run = v, 1
    counts.append(run)
    uncompressed = {"size": [20, 30], "counts": counts}
    for seg in (compressed, uncompressed):
        m = annotation_mask({"segmentation": seg}, 20, 30, "x")
        assert np.array_equal(m, truth.astype(bool))
    r = rasterize(image([{"id": 1, "segmentation": uncompressed, "iscrowd": 1}]))
    assert r.crowd == 1 and r.instances == 1


@pytest.mark.parametrize("seg,match", [
    ([[1, 2, 3, 4]], "at least 3"),
    ([[1, 2, 3, 4, 5]], "at least 3"),
    ([[1, 2, "a", 4, 5, 6]], "not a list of numbers"),
    ([], "empty polygon"),
    ("nonsense", "polygons or RLE"),
    ({"size": [5, 5], "counts": [25]}, "does not match"),
    ({"size": [20, 30], "counts": [10, 5]}, "cover 15 px"),
])
def test_broken_segmentations_are_errors(seg, match):
    with pytest.raises(DataError, match=match):
        rasterize(image([{"id": 7, "segmentation": seg}]))


def test_lazy_merges_touching_and_overlapping_cells():
    anns = [
        {"id": 1, "segmentation": [square(0, 0, 5, 5)]},
        {"id": 2, "segmentation": [square(5, 0, 10, 5)]},     # touches 1
        {"id": 3, "segmentation": [square(8, 2, 12, 8)]},     # overlaps 2
        {"id": 4, "segmentation": [square(20, 10, 25, 15)]},  # alone
    ]
    exact = rasterize(image(anns))
    lazy = rasterize(image(anns), lazy=True)
    assert exact.instances == 4 and lazy.instances == 2
    assert np.array_equal(exact.labels > 0, lazy.labels > 0)


def test_lazy_keeps_a_multipart_instance_together():
    anns = [{"id": 1, "segmentation": [square(0, 0, 3, 3), square(20, 10, 23, 13)]}]
    assert rasterize(image(anns), lazy=True).instances == 1


def test_load_coco_keeps_broken_entries_as_errors(tmp_path: Path):
    doc = {"images": [{"id": 1, "file_name": "a.tif", "width": 10, "height": 10},
                      {"id": 2, "file_name": "b.tif", "width": -1, "height": 10},
                      {"id": 1, "file_name": "c.tif", "width": 10, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "segmentation": [square(0, 0, 3, 3)]},
                           {"id": 2, "image_id": 99, "segmentation": [square(0, 0, 3, 3)]}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    coco = load_coco(tmp_path / "c.json")
    assert [im.error is None for im in coco.images] == [True, False, False]
    assert "duplicate image id" in coco.images[2].error
    assert any("not in 'images'" in w for w in coco.warnings)


def test_not_coco(tmp_path: Path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="no 'images' list"):
        load_coco(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(DataError, match="not a JSON file"):
        load_coco(tmp_path / "y.json")


@pytest.mark.parametrize("name,expected", [
    ("../../x.tif", "x"), ("/etc/passwd", "passwd"), ("..\\..\\win.tif", "win"),
    ("a b/c d.png", "c_d"), ("..", "image-9"), ("", "image-9"), (".hidden.tif", "hidden"),
])
def test_safe_stem(name, expected):
    assert safe_stem(name, 9) == expected


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 1)))
def test_rle_round_trip(mask):
    h, w = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    decoded = annotation_mask({"segmentation": {"size": [h, w], "counts": rle["counts"]}}, h, w, "x")
    assert np.array_equal(decoded, mask.astype(bool))
