"""Per-image agreement between a predicted and a true foreground mask.

Confluence is always the foreground fraction of the ORIGINAL image area.
"""

from __future__ import annotations

import numpy as np


def confluence(mask: np.ndarray) -> float:
    """Fraction of pixels that are foreground.

    >>> confluence(np.array([[1, 0], [0, 0]], dtype=bool))
    0.25
    """
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        raise ValueError("confluence of an empty image is undefined")
    return float(np.count_nonzero(m)) / float(m.size)


def _counts(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int]:
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(true, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: prediction {p.shape}, truth {t.shape}")
    inter = int(np.count_nonzero(p & t))
    return inter, int(np.count_nonzero(p)), int(np.count_nonzero(t))


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two foreground masks; 1.0 when both are empty.

    >>> iou(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))
    0.3333333333333333
    """
    inter, n_pred, n_true = _counts(pred, true)
    union = n_pred + n_true - inter
    return 1.0 if union == 0 else inter / union


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice coefficient (F1 of pixels); 1.0 when both are empty.

    >>> dice(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))
    0.5
    """
    inter, n_pred, n_true = _counts(pred, true)
    total = n_pred + n_true
    return 1.0 if total == 0 else 2.0 * inter / total


def compare(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """All per-image metrics of the evaluate record, in one pass over the masks."""
    inter, n_pred, n_true = _counts(pred, true)
    union = n_pred + n_true - inter
    size = float(np.asarray(pred).size)
    conf_pred = n_pred / size
    conf_true = n_true / size
    return {
        "iou": 1.0 if union == 0 else inter / union,
        "dice": 1.0 if n_pred + n_true == 0 else 2.0 * inter / (n_pred + n_true),
        "confluence_pred": conf_pred,
        "confluence_true": conf_true,
        "abs_confluence_error": abs(conf_pred - conf_true),
    }


def cell_diameters(labels: np.ndarray) -> list[float]:
    """Equivalent-circle diameter, sqrt(4 area / pi), of each labelled instance (0 = background).

    >>> [round(d, 3) for d in cell_diameters(np.array([[1, 1], [0, 2]]))]
    [1.596, 1.128]
    """
    flat = np.asarray(labels).astype(np.int64, copy=False).ravel()
    areas = np.bincount(flat[flat > 0])
    return [float(np.sqrt(4.0 * a / np.pi)) for a in areas[1:] if a > 0]
