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



def mean_diameter(masks: list[np.ndarray]) -> float:
    """Mean equivalent-circle diameter, in pixels, of the instances in label images.

    Each instance of area ``A`` has diameter ``2 * sqrt(A / pi)``; the mean is over
    all instances of all images. A boolean mask is split into connected components
    (8-connectivity) first. Raises :class:`~monolayer.errors.DataError` when there
    is no instance.

    >>> yy, xx = np.mgrid[:50, :50]
    >>> round(mean_diameter([((yy - 25) ** 2 + (xx - 25) ** 2 < 100).astype(np.uint8)]))
    20
    """
    from scipy import ndimage as ndi

    from monolayer.errors import DataError

    areas: list[np.ndarray] = []
    for mask in masks:
        labels = np.asarray(mask)
        if labels.dtype == bool:
            labels = ndi.label(labels, structure=np.ones((3, 3), dtype=bool))[0]
        elif not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"label image has dtype {labels.dtype}; expected integer labels or bool")
        counts = np.bincount(labels[labels > 0].ravel())
        areas.append(counts[counts > 0])
    all_areas = np.concatenate(areas) if areas else np.zeros(0)
    if all_areas.size == 0:
        raise DataError("no labelled cell in the masks: cannot compute a mean diameter",
                        "give --diameter as a number of pixels")
    return float(np.mean(2.0 * np.sqrt(all_areas / np.pi)))
