"""Small binary-mask helpers shared by the classical methods and the label tools."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected objects with fewer than ``min_size`` pixels.

    (Written here rather than taken from scikit-image, whose argument changed
    meaning between releases.)

    >>> m = np.zeros((5, 5), bool); m[0, 0] = True; m[2:5, 2:5] = True
    >>> int(remove_small_objects(m, 2).sum())
    9
    """
    m = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not m.any():
        return m.copy()
    labels, n = ndi.label(m, structure=EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray, max_size: int | None = None) -> np.ndarray:
    """Fill holes (background not connected to the border) of up to ``max_size`` pixels.

    ``max_size=None`` fills every hole.

    >>> m = np.ones((7, 7), bool); m[1, 1] = False; m[3:6, 3:6] = False
    >>> int((~fill_holes(m, max_size=4)).sum()), int((~fill_holes(m)).sum())
    (9, 0)
    """
    # A hole is a 4-connected background component touching no image edge (what
    # ndi.binary_fill_holes fills), so one labelling of the background finds every hole
    # and its size: no flood fill from the border (tests/test_classical_speed.py holds the
    # binary_fill_holes version and checks they agree).
    m = np.asarray(mask, dtype=bool)
    labels = np.empty(m.shape, dtype=np.intp)  # what bincount and take index with: no copies
    n = ndi.label(~m, output=labels)
    if n == 0:
        return m.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    fill = np.ones(n + 1, dtype=bool) if max_size is None else sizes <= max_size
    fill[0] = False
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        fill[edge] = False
    return m | np.take(fill, labels)
