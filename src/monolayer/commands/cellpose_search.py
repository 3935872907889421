"""The paper's grid search for Cellpose's flow and cell probability thresholds, as pure logic.

Flow threshold 0..3 and cell probability threshold -6..6, both in steps of 0.5
(7 x 25 = 175 pairs), scored on labelled images by the foreground IoU.

The network runs once per image; only cellpose's mask reconstruction is redone per
pair (see :meth:`monolayer.backends.cellpose.CellposeBackend.labels_over_grid`).

Objective and penalty
    Per image, the IoU of the predicted foreground (union of instances) with the
    truth; an image whose truth and prediction are both empty counts as IoU 1. When
    the prediction is empty but the truth is not, the image scores
    ``0 - EMPTY_PENALTY = -1`` instead of its IoU of 0, so a pair that loses every
    cell of one image ranks below a pair that finds a poor segmentation there. The
    objective ``score`` is the mean of these per-image values; ``mean_iou`` is the
    plain mean IoU (no penalty). The pair with the highest ``score`` wins; ties go to
    the higher ``mean_iou``, then to the pair nearest cellpose's defaults
    (flow 0.4, cell probability 0.0), then to the first in grid order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monolayer.errors import DataError, UsageError
from monolayer.io.atomic import write_text_atomic
from monolayer.metrics import iou

if TYPE_CHECKING:
    from monolayer.backends.cellpose.model import CellposeBackend

SCHEMA = "monolayer.cellpose-thresholds/1"
FLOW_THRESHOLDS: tuple[float, ...] = tuple(0.5 * i for i in range(7))          # 0.0 .. 3.0
CELLPROB_THRESHOLDS: tuple[float, ...] = tuple(-6.0 + 0.5 * i for i in range(25))  # -6.0 .. 6.0
EMPTY_PENALTY = 1.0
"""Subtracted from an image's IoU (then 0) when nothing is predicted but cells are labelled."""
_DEFAULTS = (0.4, 0.0)


def image_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """The per-image objective: IoU, or ``-EMPTY_PENALTY`` when every labelled cell is missed."""
    if not pred.any() and truth.any():
        return 0.0 - EMPTY_PENALTY
    return iou(pred, truth)


def search_thresholds(backend: CellposeBackend, images: list[np.ndarray], truths: list[np.ndarray],
                      *, flow_thresholds: tuple[float, ...] = FLOW_THRESHOLDS,
                      cellprob_thresholds: tuple[float, ...] = CELLPROB_THRESHOLDS) -> dict[str, Any]:
    """Best ``flow_threshold`` and ``cellprob_threshold`` for ``backend`` on labelled images.

    ``images`` are normalised 2-D float32 images, ``truths`` boolean foreground masks
    of the same shapes (label images are taken as ``> 0``). Returns ``flow_threshold``,
    ``cellprob_threshold``, ``mean_iou`` and ``score`` of the best pair, ``grid`` (one
    entry per pair, flow threshold outer, cell probability threshold inner: its
    thresholds, ``mean_iou``, ``score`` and ``empty`` = images with nothing
    predicted), ``n_images``, ``penalty``, ``diameter`` and ``weights_sha256``.
    """
    if not images:
        raise UsageError("the threshold search needs at least one labelled image")
    if len(images) != len(truths):
        raise UsageError(f"{len(images)} images but {len(truths)} masks")
    truth_masks = []
    for i, (image, truth) in enumerate(zip(images, truths)):
        truth = np.asarray(truth)
        if truth.shape != np.shape(image):
            raise DataError(f"image {i}: mask shape {truth.shape} differs from image shape {np.shape(image)}")
        truth_masks.append(truth > 0 if truth.dtype != bool else truth)

    flows = list(flow_thresholds)
    probs = list(cellprob_thresholds)
    scores = np.zeros((len(flows), len(probs), len(images)))
    ious = np.zeros_like(scores)
    empty = np.zeros((len(flows), len(probs)), dtype=int)
    for k, (image, truth) in enumerate(zip(images, truth_masks)):
        outputs = backend.flows(image)
        for flow, prob, labels in backend.labels_over_grid(outputs, flows, probs):
            i, j = flows.index(flow), probs.index(prob)
            pred = labels > 0
            ious[i, j, k] = iou(pred, truth)
            scores[i, j, k] = image_score(pred, truth)
            empty[i, j] += int(not pred.any())

    grid = []
    for i, flow in enumerate(flows):
        for j, prob in enumerate(probs):
            grid.append({"flow_threshold": flow, "cellprob_threshold": prob,
                         "mean_iou": float(ious[i, j].mean()), "score": float(scores[i, j].mean()),
                         "empty": int(empty[i, j])})

    def rank(entry: dict[str, Any]) -> tuple[float, float, float]:
        distance = math.hypot(entry["flow_threshold"] - _DEFAULTS[0],
                              entry["cellprob_threshold"] - _DEFAULTS[1])
        return (-entry["score"], -entry["mean_iou"], distance)

    best = min(grid, key=rank)  # min() keeps the first of equal keys: grid order
    return {"flow_threshold": best["flow_threshold"], "cellprob_threshold": best["cellprob_threshold"],
            "mean_iou": best["mean_iou"], "score": best["score"], "grid": grid,
            "n_images": len(images), "penalty": EMPTY_PENALTY,
            "diameter": backend.effective_diameter, "weights_sha256": backend.weights.sha256}


def write_thresholds(path: Path, result: dict[str, Any]) -> None:
    """Write a search result as JSON (atomically), readable by ``CellposeBackend(thresholds_file=...)``."""
    record = {"schema": SCHEMA, "model": "cellpose", **result}
    write_text_atomic(Path(path), json.dumps(record, indent=2) + "\n")


def labelled_images(items: list[Any], truth_sources: list[Path], page: int = 0,
                    normalize: str = "none") -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Images as segment gives them to the model (``normalize``: a mode of
    :func:`monolayer.io.images.preprocess`) and their truth masks, matched by image
    identity as ``evaluate`` does.

    An image without ground truth is an error: tuning on a silently smaller set
    would give thresholds nobody asked for.
    """
    from monolayer.commands.evaluate import load_truth
    from monolayer.errors import NoInputError
    from monolayer.io.images import load_image, preprocess, to_grayscale

    truth = load_truth(truth_sources)
    images, masks, names = [], [], []
    for item in items:
        if item.error is not None:
            raise NoInputError(item.error)
        loaded = load_image(item.image, page)
        entry, how = truth.match(item.image, loaded.sha256, Path(item.image).stem)
        if entry is None:
            raise NoInputError(f"{item.image}: {how}", "every image of the search needs ground truth")
        gray = to_grayscale(loaded.array)
        mask = entry.load()
        if mask.shape != gray.shape:
            raise DataError(f"{item.image}: truth mask is {mask.shape}, image is {gray.shape}")
        images.append(preprocess(gray, loaded.array.dtype, normalize))  # as segment feeds the model
        masks.append(mask)
        names.append(item.image)
    return images, masks, names
