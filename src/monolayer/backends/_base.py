"""The one interface every segmentation backend implements.

A backend is constructed once per run (weights loaded once), then called per
image with a 2-D float32 array, preprocessed as its ``SPEC.preprocess`` (or ``--normalize``)
says: in [0, 1] for ``percentile`` and ``sam8``, raw intensities for ``none``. It returns a
:class:`Prediction` whose mask has exactly the input's shape: backends that
resize or pad internally must undo that before returning, so confluence is
always measured over the original image area.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np


@dataclass
class Prediction:
    """What a backend says about one image."""

    mask: np.ndarray
    """Boolean foreground, same shape as the input image."""
    score: np.ndarray | None = None
    """Per-pixel float32 map in [0, 1] (a probability for learned models), or None."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Backend-specific record fields (e.g. instance count, mean instance confidence)."""
    threshold: float | None = None
    """Set where the mask is by definition ``score >= threshold``: a mask scaled back to the
    image's size is then the scaled score thresholded, so the two saved files agree."""


class Backend(ABC):
    """A segmentation model. Subclasses take keyword-only options in ``__init__``."""

    name: ClassVar[str]
    score_kind: str | None = None
    """What ``Prediction.score`` is: ``"probability"``, ``"score"``, or None if never given."""

    batch_size: int = 1
    """How many images ``predict_batch`` takes at once; the caller groups images by this."""

    @abstractmethod
    def predict(self, image: np.ndarray) -> Prediction:
        """Segment one preprocessed grayscale image (2-D float32; see the module docstring)."""

    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """Segment several images; backends that can batch on the device override this."""
        return [self.predict(image) for image in images]

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Record fields that identify this model: ``model``, ``method``, ``params``,
        ``weights`` and ``weights_sha256`` (None for backends without weights)."""


def predict_by_shape(images: list[np.ndarray], batch_size: int,
                     run: Callable[[list[np.ndarray]], list[Prediction]]) -> list[Prediction]:
    """Predictions in input order, calling ``run`` on chunks of at most ``batch_size``
    images of equal shape (a device batch needs one shape)."""
    results: list[Prediction | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            for i, prediction in zip(chunk, run([images[i] for i in chunk]), strict=True):
                results[i] = prediction
    return [r for r in results if r is not None]
