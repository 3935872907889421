"""Cellpose 3.1: this module declares the backend (options, trainer, input); ``model`` runs it.

Importing this module imports no framework; anything else is loaded from
:mod:`monolayer.backends.cellpose.model` (torch, cellpose) on first use.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from monolayer.backends._spec import RUNTIME_OPTIONS, BackendSpec, Option
from monolayer.errors import DataError, NoInputError, UsageError

SPEC = BackendSpec(
    name="cellpose",
    summary="Cellpose 3.1 specialist model (CPnet)",
    target="monolayer.backends.cellpose.model:CellposeBackend",
    needs_weights=True,
    requires=("torch", "cellpose"),
    segment_options=(
        *RUNTIME_OPTIONS,
        Option("diameter", str, "Mean cell diameter in pixels, or 'auto' to measure it on the labelled "
               "masks given with --truth [default: the checkpoint's diam_labels].", sidecar=True,
               bounds=(1.0, None),
               metavar="PX|auto"),
        Option("truth", list, "--diameter auto: labelled instance masks (coco2mask JSON Lines or a mask "
               "folder).", metavar="PATH"),
        Option("flow_threshold", float, "Flow error threshold.", default=0.4, sidecar=True, bounds=(0.0, None)),
        Option("cellprob_threshold", float, "Cell probability threshold, in logits.", default=0.0,
               sidecar=True),
        Option("thresholds", Path, "JSON file of tuned thresholds, as written by 'monolayer "
               "cellpose-thresholds' (a flag given beside it wins).", metavar="FILE"),
    ),
    train_options=(
        Option("weights", str, "Checkpoint to start from (a cellpose 3 file); without it, random "
               "initialisation.", metavar="FILE|NAME", short="-w"),
        Option("patch", int, "Random crop size in px.", default=224, min=16),
    ),
    trainer="monolayer.training.cellpose:train_cellpose",
    # cellpose normalises the raw image itself (1st-99th percentile), as its weights expect.
    preprocess="none",
    prepare="monolayer.backends.cellpose:segment_values",
    defaults={"lr": 0.005, "batch_size": 8},
)


def read_thresholds(path: Path) -> dict[str, float]:
    """``flow_threshold`` and ``cellprob_threshold`` from a threshold-search JSON file."""
    return _thresholds(*_read_thresholds_file(Path(path))[:2])


def _read_thresholds_file(path: Path) -> tuple[Any, Path, bytes]:
    """The parsed document, its path and its bytes (read once: parsed and hashed from them)."""
    if not path.is_file():
        raise NoInputError(f"no such thresholds file: {path}",
                           "write one with 'monolayer cellpose-thresholds'")
    try:
        from monolayer.records import strict_loads

        raw = path.read_bytes()
        data = strict_loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read thresholds ({exc})") from None
    return data, path, raw


def _thresholds(data: Any, path: Path) -> dict[str, float]:
    out = {}
    for key in ("flow_threshold", "cellprob_threshold"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{path}: {key!r} missing or not a finite number",
                            "expected the JSON written by 'monolayer cellpose-thresholds'")
        out[key] = float(value)
    if out["flow_threshold"] < 0:
        raise DataError(f"{path}: flow_threshold must be >= 0, not {out['flow_threshold']}")
    return out


def segment_values(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cellpose's own option handling: (values from the file given by --thresholds, the
    options with --diameter resolved to pixels). Explicit flags win over the file."""
    given = dict(given)
    from_file: dict[str, Any] = {}
    thresholds = given.pop("thresholds", None)
    if thresholds is not None:
        import hashlib

        doc, path, raw = _read_thresholds_file(Path(thresholds))
        from_file = _thresholds(doc, path)
        # Which file, and the weights it was tuned for: the CLI refuses it for other weights.
        tuned_for = doc.get("weights_sha256") if isinstance(doc, dict) else None
        if tuned_for is not None and not (isinstance(tuned_for, str) and re.fullmatch(r"[0-9a-f]{64}", tuned_for)):
            raise DataError(f"{thresholds}: 'weights_sha256' is {tuned_for!r:.40}, not a SHA-256",
                            "use the file written by 'monolayer cellpose-thresholds'")
        from_file["_source"] = {"path": str(thresholds), "sha256": hashlib.sha256(raw).hexdigest(),
                                "weights_sha256": tuned_for}
    truth = given.pop("truth", None)
    if "diameter" in given:
        given["diameter"] = _diameter(given["diameter"], truth)
    elif truth:
        raise UsageError("--truth goes with --diameter auto")
    return from_file, given


def _diameter(value: Any, truth: list[Path] | None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        diameter = float(value)
    elif value == "auto":
        if not truth:
            raise UsageError("--diameter auto needs --truth (labelled masks to measure)")
        from monolayer.commands.segment import diameter_from_truth

        return diameter_from_truth([Path(t) for t in truth])
    else:
        try:
            diameter = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"--diameter {value!r}: give pixels or 'auto'") from None
    if not (math.isfinite(diameter) and diameter > 0):
        raise UsageError("--diameter must be a positive number of pixels")
    return diameter


def __getattr__(name: str) -> Any:
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("monolayer.backends.cellpose.model"), name)
