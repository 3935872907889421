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
from monolayer.errors import DataError, UsageError
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


# The phase parameters a file may set: (kind, lowest, highest, None allowed).
_PHASE_FIELDS: dict[str, tuple[type, float, float, bool]] = {
    "window_sigma": (float, 0.3, 20.0, False),
    "t_abs": (float, 0.0, 1.0, False),
    "k_noise": (float, 0.0, 100.0, False),
    "close_radius": (int, 0, 50, False),
    "max_hole": (int, 0, 10**9, True),
    "erode_radius": (int, 0, 50, False),
    "halo_delta": (float, 0.0, 1.0, True),
    "min_size": (int, 0, 10**9, False),
}


def phase_params(values: dict[str, Any], where: str = "phase parameters") -> Any:
    """:class:`~monolayer.backends.phase.PhaseParams` from a mapping (e.g. a ``calibrate``
    file's ``params``): the given fields replace the defaults; an unknown field, a wrong
    type or a value out of range is a :class:`DataError` naming ``where``.

    >>> phase_params({"t_abs": 0.05}).t_abs
    0.05
    >>> phase_params({"t_abs": 2}, "p.json")
    Traceback (most recent call last):
    ...
    monolayer.errors.DataError: p.json: phase parameter 't_abs' is 2, outside [0.0, 1.0]
    """
    import math

    from monolayer.backends.phase import PhaseParams

    if not isinstance(values, dict):
        raise DataError(f"{where}: phase parameters must be an object")
    unknown = sorted(set(values) - set(_PHASE_FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown phase parameter {unknown[0]!r}",
                        f"known: {', '.join(_PHASE_FIELDS)}")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        kind, low, high, nullable = _PHASE_FIELDS[name]
        if value is None and nullable:
            checked[name] = None
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (kind is int and not isinstance(value, int)):
            expected = "a whole number" if kind is int else "a number"
            raise DataError(f"{where}: phase parameter {name!r} is {value!r:.40}, expected {expected}"
                            + (" or null" if nullable else ""))
        if not low <= value <= high:
            raise DataError(f"{where}: phase parameter {name!r} is {value!r}, outside [{low}, {high}]")
        checked[name] = kind(value)
    return PhaseParams(**checked)


class ClassicalBackend(Backend):
    """Weight-free segmentation; ``method`` is ``phase`` (default) or ``canny``.

    ``params`` (phase only) replaces fields of the default
    :class:`~monolayer.backends.phase.PhaseParams`, e.g. from a ``calibrate`` file.
    """

    name: ClassVar[str] = "classical"

    def __init__(self, *, method: str = "phase", params: dict[str, Any] | None = None) -> None:
        if method not in METHODS:
            raise UsageError(f"unknown classical method {method!r}",
                             f"choose one of: {', '.join(METHODS)}")
        self.method = method
        # The Canny baseline yields edges, not a per-pixel score.
        self.score_kind = None if method == "canny" else "score"
        if method == "canny":
            if params:
                raise UsageError("calibrated parameters apply to the phase method, not canny",
                                 "drop --method canny or the parameters file")
            self.params: Any = CannyParams()
        else:
            self.params = phase_params(params or {})

    def predict(self, image: np.ndarray) -> Prediction:
        if self.method == "canny":
            return Prediction(mask=canny_mask(image, self.params), score=None)
        from monolayer.backends.phase import SCORE_THRESHOLD, segment_phase

        mask, score = segment_phase(image, self.params)
        return Prediction(mask=mask, score=score, threshold=SCORE_THRESHOLD)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "method": self.method, "params": asdict(self.params),
                "weights": None, "weights_sha256": None}
