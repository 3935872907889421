"""Classical segmentation without weights: the paper's Canny baseline and a phase-contrast method.

``canny`` follows the paper's baseline step by step: Canny edges, binary hole
filling, removal of small objects, contours by marching squares at level 0.5,
closing of open contours and polygon approximation, then the polygons drawn
filled onto a blank mask.

``phase`` (the default) is stronger on phase contrast; see
:func:`monolayer.backends.phase.segment_phase`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage as ndi

from monolayer.backends._base import Backend, Prediction
from monolayer.backends._spec import BackendSpec, Option
from monolayer.errors import UsageError
from monolayer.morphology import remove_small_objects

METHODS = ("phase", "canny")

SPEC = BackendSpec(
    name="classical",
    summary="no weights: PHANTAST-style local contrast (default) or the paper's Canny baseline",
    target="monolayer.backends.classical:ClassicalBackend",
    needs_weights=False,
    segment_options=(
        Option("method", str, "phase (local-contrast thresholding for phase contrast) or canny (the "
               "paper's baseline).", default="phase", choices=METHODS),
    ),
    preprocess="percentile",
    # Its texture windows and minimum object size (300 px) measure nothing on a thin strip:
    # a 16-row crop of a 31 % confluent field reads 0.0.
    min_side=64,
)


@dataclass(frozen=True)
class CannyParams:
    """Parameters of the Canny baseline (scikit-image defaults where the paper gives none)."""

    sigma: float = 1.0
    """Gaussian smoothing of the Canny detector, in pixels."""
    low_threshold: float = 0.1
    """Hysteresis thresholds on the gradient of the [0, 1]-normalised image."""
    high_threshold: float = 0.2
    min_size: int = 64
    """Objects smaller than this (pixels) are removed after hole filling."""
    tolerance: float = 1.0
    """Polygon approximation tolerance in pixels (0 keeps every contour point)."""


def canny_mask(image: np.ndarray, params: CannyParams = CannyParams()) -> np.ndarray:
    """The paper's baseline mask of a normalised grayscale image."""
    from skimage import draw, feature, measure

    edges = feature.canny(image, sigma=params.sigma, low_threshold=params.low_threshold,
                          high_threshold=params.high_threshold)
    filled = ndi.binary_fill_holes(edges)
    cleaned = remove_small_objects(filled, params.min_size)
    # Pad so that contours of objects touching the border close on themselves.
    padded = np.pad(cleaned, 1, mode="constant", constant_values=False)
    mask = np.zeros(image.shape, dtype=bool)
    for contour in measure.find_contours(padded.astype(np.float32), 0.5):
        if not np.array_equal(contour[0], contour[-1]):
            contour = np.vstack([contour, contour[:1]])
        polygon = measure.approximate_polygon(contour, params.tolerance)
        if len(polygon) < 3:
            continue
        rows, cols = draw.polygon(polygon[:, 0] - 1, polygon[:, 1] - 1, shape=image.shape)
        mask[rows, cols] = True
    return mask


class ClassicalBackend(Backend):
    """Weight-free segmentation; ``method`` is ``phase`` (default) or ``canny``."""

    name: ClassVar[str] = "classical"

    def __init__(self, *, method: str = "phase") -> None:
        if method not in METHODS:
            raise UsageError(f"unknown classical method {method!r}",
                             f"choose one of: {', '.join(METHODS)}")
        self.method = method
        # The Canny baseline yields edges, not a per-pixel score.
        self.score_kind = None if method == "canny" else "score"
        if method == "canny":
            self.params: Any = CannyParams()
        else:
            from monolayer.backends.phase import PhaseParams

            self.params = PhaseParams()

    def predict(self, image: np.ndarray) -> Prediction:
        if self.method == "canny":
            return Prediction(mask=canny_mask(image, self.params), score=None)
        from monolayer.backends.phase import segment_phase

        from monolayer.backends.phase import SCORE_THRESHOLD

        mask, score = segment_phase(image, self.params)
        return Prediction(mask=mask, score=score, threshold=SCORE_THRESHOLD)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "method": self.method, "params": asdict(self.params),
                "weights": None, "weights_sha256": None}
