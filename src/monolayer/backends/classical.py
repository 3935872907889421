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


# The phase parameters a file may set: (kind, lowest, highest, None allowed, lowest excluded).
# Physical sense, not the search's ladders: the texture (a local standard deviation of an image
# normalised to [0, 1]) never exceeds 0.5, so a threshold above it selects nothing, and a zero
# threshold (with a zero noise factor) selects everything, and one below 1e-4 makes the
# float32 score texture / (2 x threshold) overflow or divide by zero; windows and radii beyond a few cell
# widths, or a minimum object size of a whole large image, measure nothing.
_PHASE_FIELDS: dict[str, tuple[type, float, float, bool, bool]] = {
    "window_sigma": (float, 0.5, 10.0, False, False),
    "t_abs": (float, 1e-4, 0.5, False, False),
    "k_noise": (float, 0.0, 20.0, False, False),
    "close_radius": (int, 0, 25, False, False),
    "max_hole": (int, 0, 10**9, True, False),
    "erode_radius": (int, 0, 25, False, False),
    "halo_delta": (float, 0.0, 1.0, True, True),
    "min_size": (int, 0, 10**7, False, False),
}


def phase_bounds() -> dict[str, str]:
    """Each phase parameter's allowed values, as text (for the docs and error hints).

    >>> phase_bounds()["t_abs"]
    '[0.0001, 0.5]'
    """
    out = {}
    for name, (kind, low, high, nullable, open_low) in _PHASE_FIELDS.items():
        text = f"{'(' if open_low else '['}{low}, {high}]"
        out[name] = text + (" or null" if nullable else "")
    return out


def phase_params(values: dict[str, Any], where: str = "phase parameters", *, complete: bool = False) -> Any:
    """:class:`~monolayer.backends.phase.PhaseParams` from a mapping (e.g. a ``calibrate``
    file's ``params``): the given fields replace the defaults; an unknown field, a wrong
    type or a value out of range (:func:`phase_bounds`) is a :class:`DataError` naming
    ``where``; with ``complete``, so is a missing field.

    >>> phase_params({"t_abs": 0.05}).t_abs
    0.05
    >>> phase_params({"t_abs": 2}, "p.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    monolayer.errors.DataError: p.json: phase parameter 't_abs' is 2, outside [0.0001, 0.5] ...
    >>> phase_params({"min_size": 10**400}, "p.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    monolayer.errors.DataError: p.json: phase parameter 'min_size' is 1000...000, outside [0, 10000000] ...
    """
    import math

    from monolayer.backends.phase import PhaseParams

    hint = "bounds: " + ", ".join(f"{k} {v}" for k, v in phase_bounds().items())
    if not isinstance(values, dict):
        raise DataError(f"{where}: phase parameters must be an object")
    unknown = sorted(set(values) - set(_PHASE_FIELDS), key=str)
    if unknown:
        raise DataError(f"{where}: unknown phase parameter {unknown[0]!r:.40}",
                        f"known: {', '.join(_PHASE_FIELDS)}")
    missing = [name for name in _PHASE_FIELDS if name not in values]
    if complete and missing:
        raise DataError(f"{where}: phase parameter {missing[0]!r} is missing",
                        "a parameters file names every phase parameter (as 'monolayer calibrate' writes it)")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        kind, low, high, nullable, open_low = _PHASE_FIELDS[name]
        if value is None and nullable:
            checked[name] = None
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        # Compared as given (a huge JSON integer stays an exact int: no OverflowError).
        finite = number and (isinstance(value, int) or math.isfinite(value))
        if not finite or (kind is int and not isinstance(value, int)):
            expected = "a whole number" if kind is int else "a number"
            raise DataError(f"{where}: phase parameter {name!r} is {value!r:.40}, expected {expected}"
                            + (" or null" if nullable else ""), hint)
        if not (low < value if open_low else low <= value) or not value <= high:
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:4]}...{repr(value)[-3:]}"
            raise DataError(f"{where}: phase parameter {name!r} is {shown}, outside {phase_bounds()[name]}",
                            hint)
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
