"""Metrics and summary statistics against values worked out by hand."""

import numpy as np
import pytest

from monolayer.metrics import compare, confluence, dice, iou
from monolayer.stats import summarize


def test_iou_dice_by_hand():
    pred = np.zeros((4, 4), bool)
    true = np.zeros((4, 4), bool)
    pred[0, :3] = True       # 3 px
    true[0, 1:] = True       # 3 px, 2 shared
    assert iou(pred, true) == pytest.approx(2 / 4)
    assert dice(pred, true) == pytest.approx(4 / 6)
    m = compare(pred, true)
    assert m["confluence_pred"] == pytest.approx(3 / 16)
    assert m["abs_confluence_error"] == pytest.approx(0.0)
    assert m["iou"] == pytest.approx(0.5)


def test_empty_masks_agree_perfectly():
    empty = np.zeros((3, 3), bool)
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    full = np.ones((3, 3), bool)
    assert iou(empty, full) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        iou(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_confluence_is_over_the_whole_image():
    m = np.zeros((10, 20), bool)
    m[:5] = True
    assert confluence(m) == 0.5


def test_summarize_known_values():
    s = summarize([1, 2, 3, 4, 100])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(22.0)
    assert s["median"] == 3
    assert s["q1"] == 2 and s["q3"] == 4 and s["iqr"] == 2
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))
    assert s["min"] == 1 and s["max"] == 100


def test_summarize_single_and_empty():
    assert summarize([0.5])["std"] is None
    assert summarize([])["mean"] is None
