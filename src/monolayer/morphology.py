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
