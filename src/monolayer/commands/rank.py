"""``entropy-rank``: order images by the uncertainty of their predictions, most uncertain first.

Two definitions, as in the paper:

* ``entropy``: the mean over pixels of the binary Shannon entropy of the saved
  probability map, ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``, in bits (0 = sure,
  1 = p of 0.5 everywhere). Highest first.
* ``score`` (Mask R-CNN, which has no probability map): the mean confidence of the
  image's kept instances. Lowest first; an image with no kept instance scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.commands.evaluate import resolve
from monolayer.errors import EXIT_DATA, MonolayerError, UsageError
from monolayer.records import new_record

KIND = "rank"
ENTROPY_DEFINITION = "mean per-pixel binary Shannon entropy of the probability map, bits; highest first"
SCORE_DEFINITION = "mean confidence of the kept instances (0 if none); lowest first"


def mean_binary_entropy(prob: np.ndarray) -> float:
    """Mean of ``-p log2 p - (1-p) log2 (1-p)`` over all pixels (0 log 0 = 0).

    >>> mean_binary_entropy(np.array([0.5, 0.0, 1.0, 0.5]))
    0.5
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(np.nan_to_num(h, nan=0.0).mean())


def _kind(record: dict[str, Any]) -> str:
    return "score" if record.get("model") == "maskrcnn" else "entropy"


def rank(records: Iterable[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Ranked records (rank 1 = most uncertain), then error records for unusable input.

    All records must be of one kind (probability maps, or Mask R-CNN): mixing the
    two definitions in one ranking would compare unlike numbers.
    """
    scored: list[tuple[float, str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    kinds: set[str] = set()
    for source, number, record in records:
        image = str(record.get("image", f"{source}:{number}"))
        carried = {k: record[k] for k in ("image_sha256", "mask", "prob", "model", "method", "confluence")
                   if k in record}
        if "error" in record:
            errors.append(new_record(KIND, image=image, error=f"segment failed: {record['error']}",
                                     exit_code=int(record.get("exit_code", EXIT_DATA))))
            continue
        kind = _kind(record)
        kinds.add(kind)
        try:
            if kind == "score":
                value = record.get("mean_confidence")
                value = 0.0 if value is None else float(value)
            else:
                if not record.get("prob"):
                    raise MonolayerError(f"{source}:{number}: {image} has no saved probability map",
                                         "run segment with --save-prob")
                from monolayer.io.images import read_image

                base = None if source == "<stdin>" else Path(source).parent
                value = mean_binary_entropy(read_image(resolve(record["prob"], base)))
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
