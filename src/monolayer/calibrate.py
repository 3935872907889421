"""Fitting a method's parameters to a few labelled images, with a cross-validated error.

The objective is the mean absolute confluence error over the images (what a lab
cares about), IoU breaking ties: errors equal to within :data:`ERROR_TIE` count as
equal and the higher mean IoU wins, then the setting nearer the default. The
reported error is honest: each image's error comes from parameters fitted on the
other images only (leave-one-out for up to :data:`LOO_MAX` images, else
:data:`K_FOLDS`-fold, folds ``i % K``); the parameters written are then fitted on all
of them.

Two searches, both deterministic:

``phase`` (the classical default)
    A coarse grid over the texture threshold and the erosion radius (the two that
    move the mask's area most), then coordinate descent over every parameter
    along fixed ladders of values until no single change helps (at most
    :data:`MAX_SWEEPS` sweeps). :class:`PhaseImage` reproduces
    :func:`monolayer.backends.phase.segment_phase` stage by stage, caching each
    stage by the parameters it depends on (the texture only on the window, the
    noise floor on nothing), so hundreds of settings cost little more than one
    segmentation each; tests check its masks equal ``segment_phase``'s bit for bit.
``threshold`` (sam, unet, maskrcnn)
    The probability threshold, on the probability maps the model gives once per
    image: a grid 0.05..0.95 in steps of 0.05, then 0.01 around the best.

A parameters file (``monolayer.params/1``) holds the fitted values and how they
were obtained; ``segment --params FILE`` applies them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from monolayer.errors import DataError, NoInputError, UsageError
from monolayer.io.images import PREPROCESS_MODES

SCHEMA = "monolayer.params/1"
ERROR_TIE = 0.001
"""Mean absolute confluence errors closer than this are a tie, broken by IoU."""
LOO_MAX = 6
"""Up to this many images, leave-one-out; more, :data:`K_FOLDS`-fold."""
K_FOLDS = 5
MAX_SWEEPS = 4
THRESHOLD_MODELS = ("sam", "unet", "maskrcnn")
"""Learned models whose mask is their probability map thresholded: ``--threshold`` is fitted."""

# Ladders of values the phase search may take (each includes the default).
PHASE_LADDERS: dict[str, tuple[Any, ...]] = {
    "t_abs": (0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.06, 0.08, 0.1, 0.13),
    "erode_radius": (0, 1, 2, 3, 4, 5, 6, 8),
    "k_noise": (1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
    "window_sigma": (1.0, 1.5, 2.0, 3.0),
    "close_radius": (0, 1, 2, 3, 4, 6),
    "max_hole": (100, 300, 1000, 3000, 10000, 30000, None),
    "halo_delta": (0.03, 0.05, 0.1, 0.2, None),
    "min_size": (30, 100, 300, 1000, 3000),
}
COARSE = ("t_abs", "erode_radius")
"""Searched jointly first: the threshold and the erosion trade against each other."""
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


# -- the objective and cross-validation ---------------------------------------------------

@dataclass(frozen=True)
class Score:
    """Per-image results of one setting: predicted confluence and IoU per image."""

    errors: tuple[float, ...]
    ious: tuple[float, ...]

    @property
    def error(self) -> float:
        return float(np.mean(self.errors))

    @property
    def iou(self) -> float:
        return float(np.mean(self.ious))

    def key(self) -> tuple[int, float]:
        """Smaller is better: the error in steps of :data:`ERROR_TIE`, then minus the IoU."""
        return (int(math.floor(self.error / ERROR_TIE + 0.5)), -self.iou)


def folds(n: int) -> list[list[int]]:
    """Held-out index sets: leave-one-out up to :data:`LOO_MAX` images, else ``i % K``.

    >>> folds(3)
    [[0], [1], [2]]
    >>> folds(7)
    [[0, 5], [1, 6], [2], [3], [4]]
    """
    if n <= LOO_MAX:
        return [[i] for i in range(n)]
    return [[i for i in range(n) if i % K_FOLDS == k] for k in range(K_FOLDS)]


@dataclass
class CrossValidated:
    """What :func:`cross_validate` found."""

    params: Any
    """What the procedure gives on every image: the fitted parameters, or the default
    when fitting did not beat it in cross-validation (see :func:`cross_validate`)."""
    fitted: Any
    """The parameters fitted on every image (written only if ``calibrated``)."""
    calibrated: bool
    cv_errors: list[float]
    """Per image, from the fold that held it out: the whole procedure (fit, and the choice
    between fitted and default) run without that image."""
    cv_ious: list[float]
    fold_params: list[Any]
    folds: list[list[int]]
    fit_cv_errors: list[float]
    """Per image, the parameters fitted without it (no choice): what the choice compares
    with the default's error."""
    fit_cv_ious: list[float]
    default_errors: list[float]
    default_ious: list[float]
    train_errors: list[float]
    train_ious: list[float]


def check_count(n: int, warn: Callable[[str], None] | None = None) -> None:
    """0 or 1 labelled image is a usage error; 2 is allowed with a warning."""
    if n < 2:
        raise UsageError(f"calibration needs labelled images; {n} given",
                         "label at least 3 images: with fewer, no error estimate is honest")
    if n == 2 and warn is not None:
        warn("2 images: each fold fits on one image; the cross-validated error is a rough "
             "estimate (label at least 3)")


def cross_validate(n: int, fit: Callable[[list[int]], Any],
                   evaluate: Callable[[Any, list[int]], Score], default: Any,
                   progress: Callable[[str], None] | None = None) -> CrossValidated:
    """Cross-validate the calibration procedure, then run it on all images.

    The procedure, on a set of training images: fit parameters (``fit(indices)`` looks
    at those images only); cross-validate that fit within the set; keep the fitted
    parameters only if their cross-validated error beats the default's error on the
    set by more than :data:`ERROR_TIE`, else keep the default. A fit on a few
    images can be worse than the default elsewhere (an image with missing labels
    pulls the threshold), and this choice is what keeps calibration from making
    things worse. The reported error cross-validates the whole procedure, choice
    included (a nested cross-validation): each image's error comes from a procedure
    that never saw it. ``evaluate(params, indices)`` scores parameters on images.
    """
    check_count(n)
    say = progress or (lambda _message: None)
    fits: dict[tuple[int, ...], Any] = {}

    def fitted(indices: list[int]) -> Any:
        key = tuple(indices)
        if key not in fits:
            say(f"fit {len(fits) + 1}: on {len(key)} image(s)")
            fits[key] = fit(list(key))
        return fits[key]

    def inner_cv(train: list[int]) -> tuple[list[float], list[float]]:
        errors, ious = [math.nan] * len(train), [math.nan] * len(train)
        for held in folds(len(train)):
            inner_train = [train[i] for i in range(len(train)) if i not in held]
            score = evaluate(fitted(inner_train), [train[i] for i in held])
            for i, e, j in zip(held, score.errors, score.ious):
                errors[i], ious[i] = e, j
        return errors, ious

    def procedure(train: list[int]) -> tuple[Any, bool, list[float], list[float]]:
        params = fitted(train)
        if len(train) < 2:
            return params, True, [], []
        errors, ious = inner_cv(train)
        beats = float(np.mean(errors)) < evaluate(default, train).error - ERROR_TIE
        return (params if beats else default), beats, errors, ious

    split = folds(n)
    cv_errors = [math.nan] * n
    cv_ious = [math.nan] * n
    fold_params = []
    for held_out in split:
        train = [i for i in range(n) if i not in held_out]
        params, _, _, _ = procedure(train)
        fold_params.append(params)
        score = evaluate(params, held_out)
        for i, e, j in zip(held_out, score.errors, score.ious):
            cv_errors[i], cv_ious[i] = e, j
    everything = list(range(n))
    params, calibrated, fit_errors, fit_ious = procedure(everything)
    default_score = evaluate(default, everything)
    train_score = evaluate(params, everything)
    return CrossValidated(params, fitted(everything), calibrated, cv_errors, cv_ious,
                          fold_params, split, fit_errors, fit_ious,
                          list(default_score.errors), list(default_score.ious),
                          list(train_score.errors), list(train_score.ious))


# -- phase: the stages of segment_phase, cached ------------------------------------------

class PhaseImage:
    """One labelled image, segmented by the phase method under many parameter settings.

    Each stage of :func:`~monolayer.backends.phase.segment_phase` is cached by the
    parameters it depends on (a few recent entries per stage), so settings that
    share a prefix of stages share its work.
    """

    STAGES = ("window_sigma", "threshold", "close_radius", "max_hole", "erode_radius", "halo_delta")
    KEEP = 12
    """Entries kept per stage (least recently used dropped): bounds memory on big images."""

    def __init__(self, image: np.ndarray, truth: np.ndarray) -> None:
        from monolayer.backends.phase import as_phase_input, noise_sigma

        a = as_phase_input(image, "PhaseImage")
        self.a = a
        self.truth = np.asarray(truth, dtype=bool)
        if self.truth.shape != a.shape:
            raise ValueError(f"truth {self.truth.shape} and image {a.shape} differ")
        self.n_true = int(np.count_nonzero(self.truth))
        self.noise = noise_sigma(a)
        self._blur1: np.ndarray | None = None
        self._caches: dict[str, OrderedDict[Any, Any]] = {stage: OrderedDict() for stage in self.STAGES}
        self.results: dict[Any, tuple[float, float]] = {}

    def _cached(self, stage: str, key: Any, make: Callable[[], Any]) -> Any:
        cache = self._caches[stage]
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        if len(cache) > self.KEEP:
            cache.popitem(last=False)
        return value

    def texture(self, sigma: float) -> np.ndarray:
        """Local standard deviation in a Gaussian window: segment_phase's own stage."""
        from monolayer.backends.phase import local_std

        return self._cached("window_sigma", sigma, lambda: local_std(self.a, sigma))

    def threshold(self, p: Any) -> float:
        return max(p.t_abs, p.k_noise * self.noise)

    def mask(self, p: Any) -> np.ndarray:
        """The mask ``segment_phase(image, p)`` gives (a cached array: do not modify)."""
        from monolayer.backends.phase import _closing, _erosion, remove_halo
        from monolayer.morphology import fill_holes, remove_small_objects

        thr = self.threshold(p)
        k1 = (p.window_sigma, thr)
        raw = self._cached("threshold", k1, lambda: self.texture(p.window_sigma) > thr)
        k2 = (*k1, p.close_radius)
        closed = self._cached("close_radius", k2,
                              lambda: _closing(raw, p.close_radius) if p.close_radius > 0 else raw)
        k3 = (*k2, p.max_hole)
        filled = self._cached("max_hole", k3, lambda: fill_holes(closed, p.max_hole))
        k4 = (*k3, p.erode_radius)
        eroded = self._cached("erode_radius", k4,
                              lambda: _erosion(filled, p.erode_radius, 1) if p.erode_radius > 0 else filled)

        def smoothed() -> np.ndarray:
            if self._blur1 is None:
                self._blur1 = ndi.gaussian_filter(self.a, 1.0)
            return self._blur1

        def halo() -> np.ndarray:
            return remove_halo(self.a, eroded, p.halo_delta, p.max_hole, smoothed)

        dehaloed = self._cached("halo_delta", (*k4, p.halo_delta), halo)
        return remove_small_objects(dehaloed, p.min_size)

    def score(self, p: Any) -> tuple[float, float]:
        """(|confluence error|, IoU) of setting ``p``, memoised."""
        key = (p, self.threshold(p))
        if key not in self.results:
            m = self.mask(p)
            n_pred = int(np.count_nonzero(m))
            inter = int(np.count_nonzero(m & self.truth))
            union = n_pred + self.n_true - inter
            self.results[key] = (abs(n_pred - self.n_true) / m.size, 1.0 if union == 0 else inter / union)
        return self.results[key]


def _phase_evaluate(images: Sequence[PhaseImage]) -> Callable[[Any, list[int]], Score]:
    def evaluate(params: Any, indices: list[int]) -> Score:
        pairs = [images[i].score(params) for i in indices]
        return Score(tuple(e for e, _ in pairs), tuple(j for _, j in pairs))

    return evaluate


def _distance(params: Any, default: Any) -> int:
    """How many ladder steps ``params`` is from ``default`` (the last tie-breaker)."""
    steps = 0
    for name, ladder in PHASE_LADDERS.items():
        a, b = getattr(params, name), getattr(default, name)
        if a != b:
            steps += abs(ladder.index(a) - ladder.index(b)) if a in ladder and b in ladder else 1
    return steps


def fit_phase(images: Sequence[PhaseImage], indices: list[int], default: Any = None,
              ladders: dict[str, tuple[Any, ...]] | None = None) -> Any:
    """PhaseParams minimising the objective on ``images[indices]``: coarse grid, then
    coordinate descent along ``ladders`` (default :data:`PHASE_LADDERS`)."""
    from monolayer.backends.phase import PhaseParams

    default = default if default is not None else PhaseParams()
    ladders = dict(PHASE_LADDERS if ladders is None else ladders)
    evaluate = _phase_evaluate(images)

    def rank(p: Any) -> tuple[Any, ...]:
        return (*evaluate(p, indices).key(), _distance(p, default))

    best = default
    best_rank = rank(best)
    coarse = [name for name in COARSE if name in ladders]
    if coarse:
        import itertools

        for values in itertools.product(*(ladders[name] for name in coarse)):
            candidate = dataclasses.replace(default, **dict(zip(coarse, values)))
            r = rank(candidate)
            if r < best_rank:
                best, best_rank = candidate, r
    for _sweep in range(MAX_SWEEPS):
        changed = False
        for name, ladder in ladders.items():
            for value in ladder:
                if value == getattr(best, name):
                    continue
                candidate = dataclasses.replace(best, **{name: value})
                r = rank(candidate)
                if r < best_rank:
                    best, best_rank, changed = candidate, r, True
        if not changed:
            break
    return best


def calibrate_phase(images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                    progress: Callable[[str], None] | None = None,
                    ladders: dict[str, tuple[Any, ...]] | None = None) -> CrossValidated:
    """Cross-validated phase parameters for preprocessed images and their foreground masks."""
    from monolayer.backends.phase import PhaseParams

    check_count(len(images))
    prepared = [PhaseImage(image, truth) for image, truth in zip(images, truths, strict=True)]
    default = PhaseParams()
    return cross_validate(len(prepared), lambda idx: fit_phase(prepared, idx, default, ladders),
                          _phase_evaluate(prepared), default, progress)


# -- learned models: the probability threshold --------------------------------------------

@dataclass
class ProbImage:
    """A model's probability map of one labelled image; scores per threshold are memoised."""

    prob: np.ndarray
    truth: np.ndarray
    results: dict[float, tuple[float, float]] = field(default_factory=dict)

    def score(self, threshold: float) -> tuple[float, float]:
        if threshold not in self.results:
            m = self.prob >= np.float32(threshold)
            truth = np.asarray(self.truth, dtype=bool)
            n_pred, n_true = int(np.count_nonzero(m)), int(np.count_nonzero(truth))
            inter = int(np.count_nonzero(m & truth))
            union = n_pred + n_true - inter
            self.results[threshold] = (abs(n_pred - n_true) / m.size, 1.0 if union == 0 else inter / union)
        return self.results[threshold]


def fit_threshold(images: Sequence[ProbImage], indices: list[int], default: float = 0.5) -> float:
    """The threshold minimising the objective on ``images[indices]``: the 0.05 grid, then 0.01
    steps within 0.04 of its best; ties go to the threshold nearer ``default``."""
    def rank(t: float) -> tuple[Any, ...]:
        pairs = [images[i].score(t) for i in indices]
        return (*Score(tuple(e for e, _ in pairs), tuple(j for _, j in pairs)).key(), abs(t - default))

    best = min((*THRESHOLD_GRID, default), key=rank)
    fine = [round(best + 0.01 * k, 2) for k in range(-4, 5)]
    return min([t for t in fine if 0.0 < t < 1.0] + [best], key=rank)


def calibrate_threshold(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], default: float = 0.5,
                        progress: Callable[[str], None] | None = None) -> CrossValidated:
    """Cross-validated probability threshold for probability maps and their foreground masks."""
    check_count(len(probs))
    images = [ProbImage(np.asarray(p, np.float32), np.asarray(t, bool)) for p, t in zip(probs, truths, strict=True)]

    def evaluate(t: float, indices: list[int]) -> Score:
        pairs = [images[i].score(t) for i in indices]
        return Score(tuple(e for e, _ in pairs), tuple(j for _, j in pairs))

    return cross_validate(len(images), lambda idx: fit_threshold(images, idx, default), evaluate,
                          default, progress)


# -- the parameters file ------------------------------------------------------------------

def write_params(path: Path, doc: dict[str, Any]) -> str:
    """Write a parameters document as JSON (atomically); returns the file's SHA-256."""
    from monolayer.io.atomic import write_text_atomic

    from monolayer import __version__

    text = json.dumps({"schema": SCHEMA, "version": __version__, **doc}, indent=2) + "\n"
    write_text_atomic(Path(path), text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


THRESHOLD_BOUNDS = (0.01, 0.99)
"""A learned model's threshold in a parameters file: what the threshold search can give
(0.05..0.95, refined by 0.01); beyond, nearly every or no pixel is foreground."""
NORMALIZE_VALUES = PREPROCESS_MODES
"""The resolved ``--normalize`` a calibration records (``auto`` is resolved before; SAM's
own ``sam8`` included)."""


@dataclass(frozen=True)
class ParamsFile:
    """A parameters file as read: its values, what it was made for, and its checksum."""

    path: str
    sha256: str
    model: str
    method: str | None
    params: dict[str, Any]
    weights_sha256: str | None
    qc_reference: dict[str, Any] | None
    normalize: str = "percentile"
    """The input normalisation the images were calibrated under (resolved, never ``auto``)."""
    resize: int | None = None
    """The ``--resize`` the images were calibrated under (None: full size)."""

    def provenance(self) -> dict[str, Any]:
        """What segment records under ``params.params_file``."""
        return {"path": self.path, "sha256": self.sha256, "weights_sha256": self.weights_sha256}


def _json(value: Any) -> str:
    """A value as the file spells it (null, not None), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 24 else text[:20] + "..."


def _fail(path: Path, field_name: str, message: str) -> DataError:
    return DataError(f"{path}: {field_name} {message}",
                     "expected the JSON written by 'monolayer calibrate'; calibrate again rather than edit it")


def _check_reference(path: Path, reference: Any) -> dict[str, Any]:
    """The file's ``qc_reference``: one ``qc.reference_from`` could have made, naming at least one
    domain measure. Missing, null or empty is refused: segment would silently stop saying which
    images are unlike the calibration images (the one check that a calibration needs)."""
    from monolayer import qc

    if reference is None or reference == {}:
        raise _fail(path, "'qc_reference'", "is missing or empty: without it segment cannot flag images "
                    "unlike the calibration images")
    try:
        checked = qc.check_reference(reference)
    except ValueError as exc:
        raise _fail(path, "'qc_reference'", f"is not valid ({exc})") from None
    if not set(checked) & set(qc.DOMAIN):
        raise _fail(path, "'qc_reference'", f"names none of {', '.join(qc.DOMAIN)}")
    return checked


def read_params(path: Path) -> ParamsFile:
    """Read and check a parameters file; anything malformed is a :class:`DataError` naming it
    and the field. Every field is checked whoever wrote the file:

    - ``params``: classical: every phase parameter, each within
      :func:`monolayer.backends.classical.phase_bounds`; learned: ``threshold`` within
      :data:`THRESHOLD_BOUNDS` (the model's other options are checked as segment checks them);
    - ``weights_sha256``: null for classical, the weights' SHA-256 for a learned model;
    - ``qc_reference`` (with ``qc_version`` equal to :data:`monolayer.qc.QC_VERSION`): present,
      valid and naming a domain measure (see :func:`_check_reference`);
    - ``calibration``: ``calibrated`` true or false (false: ``params`` must be the defaults,
      else the file was edited), ``normalize`` and ``resize`` the images were calibrated under.
    """
    from monolayer.records import strict_loads

    path = Path(path)
    if not path.is_file():
        raise NoInputError(f"no such parameters file: {path}", "write one with 'monolayer calibrate'")
    try:
        raw = path.read_bytes()
        doc = strict_loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read parameters ({exc})",
                        "expected the JSON written by 'monolayer calibrate'") from None
    hint = "expected the JSON written by 'monolayer calibrate'"
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        shown = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{path}: not a parameters file (schema {shown!r:.40}, expected {SCHEMA!r})", hint)
    model = doc.get("model")
    if model != "classical" and model not in THRESHOLD_MODELS:
        raise DataError(f"{path}: 'model' is {model!r:.40}, not a model calibrate writes", hint)
    method = doc.get("method")
    if model == "classical" and method != "phase":
        raise DataError(f"{path}: 'method' is {method!r:.40}; only the phase method is calibrated", hint)
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise _fail(path, "'params'", "is missing, empty or not an object")
    weights = doc.get("weights_sha256")
    if model == "classical" and weights is not None:
        raise _fail(path, "'weights_sha256'", f"is {weights!r:.20}..., but the classical model has no weights "
                    "(expected null)")
    if weights is not None and not (isinstance(weights, str) and re.fullmatch(r"[0-9a-f]{64}", weights)):
        raise DataError(f"{path}: 'weights_sha256' is {weights!r:.40}, not a SHA-256", hint)
    if model in THRESHOLD_MODELS and weights is None:
        raise DataError(f"{path}: a {model} parameters file must name its weights' SHA-256", hint)
    if model == "classical":
        from monolayer.backends.classical import phase_params

        # Unknown, missing or out-of-range values: refused here, naming the file.
        phase_params(params, str(path), complete=True)
    else:
        threshold = params.get("threshold")
        low, high = THRESHOLD_BOUNDS
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not (isinstance(threshold, int) or math.isfinite(threshold)) or not low <= threshold <= high:
            raise DataError(f"{path}: 'threshold' is {threshold!r:.40}, expected a number in [{low}, {high}]",
                            hint)
    from monolayer import qc

    version = doc.get("qc_version")
    if version != qc.QC_VERSION:
        raise _fail(path, "'qc_version'", f"is {_json(version)}, not {qc.QC_VERSION}: its qc_reference was "
                    "measured differently from this version's")
    reference = _check_reference(path, doc.get("qc_reference"))
    block = doc.get("calibration")
    if not isinstance(block, dict):
        raise _fail(path, "'calibration'", "is missing or not an object")
    calibrated = block.get("calibrated")
    if not isinstance(calibrated, bool):
        raise _fail(path, "'calibration.calibrated'", f"is {_json(calibrated)}, expected true or false")
    normalize = block.get("normalize")
    if normalize not in NORMALIZE_VALUES:
        raise _fail(path, "'calibration.normalize'", f"is {_json(normalize)}, expected one of "
                    f"{', '.join(NORMALIZE_VALUES)}")
    resize = block.get("resize")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or not 16 <= resize <= 10**5):
        raise _fail(path, "'calibration.resize'", f"is {_json(resize)}, expected null or a whole number of "
                    "pixels in [16, 100000]")
    if not calibrated:
        _check_defaults(path, model, params, block)
    return ParamsFile(str(path), hashlib.sha256(raw).hexdigest(), model, method, params, weights, reference,
                      normalize, resize)


def _check_defaults(path: Path, model: str, params: dict[str, Any], block: dict[str, Any]) -> None:
    """A file saying ``"calibrated": false`` holds the defaults (calibrate wrote them because the
    fit did not beat them); tuned values next to it mean the file was edited: refused."""
    if model == "classical":
        from dataclasses import asdict

        from monolayer.backends.phase import PhaseParams

        defaults: dict[str, Any] = asdict(PhaseParams())
    else:
        default = block.get("default_threshold")
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise _fail(path, "'calibration.default_threshold'", f"is {_json(default)}, expected a number")
        defaults = {"threshold": default}
    changed = sorted(k for k in defaults if params.get(k) != defaults[k])
    if changed:
        raise _fail(path, f"'params.{changed[0]}'", f"is {_json(params.get(changed[0]))}, but the file says "
                    f"\"calibrated\": false (the defaults were kept, {changed[0]} {_json(defaults[changed[0]])}): "
                    "the file was edited")


@dataclass
class FileLayer:
    """What ``segment --params FILE`` adds to a model's setup."""

    values: dict[str, Any]
    """Option values for the "file" layer of the precedence (a learned model's threshold)."""
    kwargs: dict[str, Any]
    """Extra constructor arguments (the classical phase parameters)."""
    provenance: dict[str, Any]
    qc_reference: dict[str, Any]
    file: ParamsFile

    def check_input(self, normalize: str, resize: int | None) -> None:
        """The run's resolved normalisation and resize must be the ones the file was calibrated
        under: its values were fitted to images prepared that way (a threshold fitted on
        percentile-stretched images means nothing on raw ones)."""
        pf = self.file
        for flag, wanted, got in (("--normalize", pf.normalize, normalize), ("--resize", pf.resize, resize)):
            if wanted != got:
                shown = "none" if got is None else got
                raise UsageError(f"this run's {flag} {shown} differs from {pf.path}, calibrated with {flag} "
                                 f"{'none (full size)' if wanted is None else wanted}",
                                 f"drop {flag} (or give {flag} {wanted}), or calibrate again under it"
                                 if wanted is not None else f"drop {flag}, or calibrate again under it")


def file_layer(path: Path, spec: Any, flags: dict[str, Any]) -> FileLayer:
    """What ``segment --params FILE`` adds for model ``spec``. A file made for another model is a
    usage error; a value the model's own option checks refuse is a data error naming the file."""
    from monolayer.backends._spec import RUNTIME_NAMES

    pf = read_params(path)
    if pf.model != spec.name:
        raise UsageError(f"{path} holds parameters calibrated for --model {pf.model}, not --model {spec.name}",
                         f"use it with --model {pf.model}, or calibrate {spec.name}")
    provenance = pf.provenance()
    if spec.name == "classical":
        if flags.get("method", "phase") != "phase":
            raise UsageError(f"{path} holds parameters of the phase method, not --method {flags['method']}",
                             "drop --method or --params")
        return FileLayer({}, {"params": dict(pf.params)}, provenance, pf.qc_reference or {}, pf)
    names = {o.name for o in spec.segment_options} - set(RUNTIME_NAMES) - {"thresholds", "truth"}
    foreign = sorted(set(pf.params) - names, key=str)
    if foreign:
        raise DataError(f"{path}: {foreign[0]!r:.40} is not a {spec.name} option a parameters file may set",
                        "expected the JSON written by 'monolayer calibrate'")
    for name, value in pf.params.items():
        option = spec.segment_option(name)
        try:
            problem = option.problem(value) if option is not None else None
        except (OverflowError, TypeError, ValueError):
            problem = f"{value!r:.40} is not a finite number"
        if problem:
            raise DataError(f"{path}: {name} {problem}", "expected the JSON written by 'monolayer calibrate'")
    return FileLayer(dict(pf.params), {}, provenance, pf.qc_reference or {}, pf)
