"""``entropy-rank``: order images by the uncertainty of their predictions, most uncertain first.

Two definitions, as in the paper:

* ``entropy``: the mean over pixels of the binary Shannon entropy of the saved
  probability map, ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``, in bits (0 = sure,
  1 = p of 0.5 everywhere). Highest first.
* ``score`` (Mask R-CNN, which has no probability map): the mean confidence of the
  image's kept instances. Lowest first; an image with no kept instance scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.commands.evaluate import resolve
from monolayer.errors import EXIT_DATA, DataError, MonolayerError, UsageError
from monolayer.io.provenance import load_verified
from monolayer.records import new_record
from monolayer.schema import check, error_code

KIND = "rank"
ENTROPY_DEFINITION = "mean per-pixel binary Shannon entropy of the probability map, bits; highest first"
SCORE_DEFINITION = "mean confidence of the kept instances (0 if none); lowest first"


PROB_TOLERANCE = 1e-6
"""How far outside [0, 1] a stored probability may stray (float rounding) before the map is refused."""


def mean_binary_entropy(prob: np.ndarray, where: str = "probability map") -> float:
    """Mean of ``-p log2 p - (1-p) log2 (1-p)`` over all pixels (0 log 0 = 0).

    A map holding NaN, infinity or values outside [0, 1] is not a probability map:
    :class:`DataError` naming ``where``, never an entropy of 0 that would rank the
    image as the surest of all.

    >>> mean_binary_entropy(np.array([0.5, 0.0, 1.0, 0.5]))
    0.5
    """
    p = np.asarray(prob)
    if p.dtype.kind not in "biuf":
        raise DataError(f"{where}: values of type {p.dtype} are not probabilities")
    p = p.astype(np.float64)
    if p.size == 0:
        raise DataError(f"{where}: probability map holds no pixels")
    finite = np.isfinite(p)
    if not finite.all():
        raise DataError(f"{where}: probability map holds {int((~finite).sum())} NaN or infinite "
                        "value(s)", "the model diverged or the file is damaged; segment again")
    low, high = float(p.min()), float(p.max())
    if low < -PROB_TOLERANCE or high > 1 + PROB_TOLERANCE:
        raise DataError(f"{where}: values from {low:g} to {high:g} are not probabilities (0..1)",
                        "give the .prob.tif that segment --save-prob wrote")
    from scipy.special import entr  # -x ln x, with 0 ln 0 = 0

    p = np.clip(p, 0.0, 1.0)
    return float(((entr(p) + entr(1.0 - p)) / np.log(2.0)).mean())


def _confidence(value: Any, where: str) -> float:
    """A record's mean instance confidence: None (no kept instance) is 0; anything that is
    not a finite number in [0, 1] is refused rather than ranked."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: mean_confidence {value!r} is not a number")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise DataError(f"{where}: mean_confidence {value!r} is not a confidence in [0, 1]",
                        "segment the image again")
    return float(value)


def _kind(record: dict[str, Any]) -> str:
    from monolayer.backends import BACKENDS

    spec = BACKENDS.get(str(record.get("model")))
    return spec.uncertainty if spec is not None else "entropy"


def rank(records: Iterable[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Ranked records (rank 1 = most uncertain), then error records for unusable input.

    All records must be of one kind (probability maps, or Mask R-CNN): mixing the
    two definitions in one ranking would compare unlike numbers.
    """
    scored: list[tuple[float, str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    kinds: set[str] = set()
    for source, number, record in records:
        where = f"{source}:{number}"
        try:
            if isinstance(record, DataError):
                raise record
            check("segment", record, where)
        except DataError as exc:
            errors.append(new_record(KIND, image=where, error=str(exc), exit_code=EXIT_DATA))
            continue
        image = str(record.get("image", where))
        carried = {k: record[k] for k in ("image_sha256", "mask", "prob", "model", "method", "confluence")
                   if k in record}
        if "error" in record:
            errors.append(new_record(KIND, image=image, error=f"segment failed: {record['error']}",
                                     exit_code=error_code(record)))
            continue
        kind = _kind(record)
        kinds.add(kind)
        try:
            if kind == "score":
                value = _confidence(record.get("mean_confidence"), f"{source}:{number}: {image}")
            else:
                if not record.get("prob"):
                    raise MonolayerError(f"{source}:{number}: {image} has no saved probability map",
                                         "run segment with --save-prob")
                base = None if source == "<stdin>" else Path(source).parent
                prob_path = resolve(record["prob"], base)
                prob = load_verified(prob_path, record.get("prob_sha256"), where, "prob_sha256").array
                value = mean_binary_entropy(prob, str(prob_path))
        except MonolayerError as exc:
            errors.append(new_record(KIND, image=image, error=str(exc), exit_code=EXIT_DATA))
            continue
        scored.append((value, image, {"image": image, **carried}))
    if len(kinds) > 1:
        raise UsageError("the input mixes Mask R-CNN records (ranked by mean confidence) with "
                         "probability maps (ranked by entropy)", "rank each model's records separately")
    kind = kinds.pop() if kinds else "entropy"
    # Most uncertain first; ties broken by image name so the order never depends on input order.
    ordered = sorted(scored, key=lambda t: ((t[0] if kind == "score" else -t[0]), t[1]))
    ranked = []
    for position, (value, _, fields) in enumerate(ordered, start=1):
        definition = SCORE_DEFINITION if kind == "score" else ENTROPY_DEFINITION
        ranked.append(new_record(KIND, rank=position, **fields, **{kind: value}, definition=definition))
    return ranked + errors
