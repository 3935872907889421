"""A checkpoint's contract, in a file beside it: what the model was trained with and expects.

``train -o OUT`` writes ``OUT.monolayer.json`` after every epoch: the model, its
architecture, the input preprocessing and ``--resize`` it was trained with, its
parameters (e.g. the mask threshold), the training set's fingerprint, the tool
version and the checkpoint's SHA-256. ``segment -w OUT`` applies it (below an
explicit flag, above the defaults), reports it in every record's ``params``, and
refuses a flag that contradicts the input contract (``--resize``,
``--normalize``) unless told ``--ignore-sidecar``. A sidecar whose SHA-256 is not
the checkpoint's describes other weights and is refused. A plain checkpoint
without a sidecar (any third-party file) works as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monolayer import __version__
from monolayer.errors import DataError
from monolayer.io.atomic import write_text_atomic

SCHEMA = "monolayer.checkpoint/1"
SUFFIX = ".monolayer.json"
CONTRACT = ("normalize", "resize")
"""Fields that describe the input the weights were trained on: a contradicting flag is refused."""


def sidecar_path(weights: Path) -> Path:
    return weights.with_name(weights.name + SUFFIX)


def write_sidecar(weights: Path, *, model: str, weights_sha256: str, normalize: str, resize: int | None,
                  params: dict[str, Any], architecture: dict[str, Any], training_set: str | None) -> Path:
    """Write the sidecar of ``weights`` atomically; return its path."""
    doc = {"schema": SCHEMA, "version": __version__, "model": model, "weights_sha256": weights_sha256,
           "architecture": architecture, "normalize": normalize, "resize": resize, "params": params,
           "training_set": training_set}
    path = sidecar_path(weights)
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def find_sidecar(weights: Path, model: str) -> dict[str, Any] | None:
    """The sidecar beside ``weights`` as named, else beside the file a link points to
    (``models/current.pt -> run7/unet.pt`` finds ``run7/unet.pt.monolayer.json``)."""
    import os

    for candidate in dict.fromkeys((weights, Path(os.path.realpath(weights)))):
        found = read_sidecar(candidate, model)
        if found is not None:
            return found
    return None


def read_sidecar(weights: Path, model: str) -> dict[str, Any] | None:
    """The sidecar of ``weights`` (checked), or None when it has none."""
    path = sidecar_path(weights)
    if not path.is_symlink() and not path.exists():
        return None
    if not path.is_file():
        raise DataError(f"{path}: the checkpoint's sidecar is not a regular file (a folder, a FIFO or "
                        "a dangling link)", "delete it, or pass --ignore-sidecar")
    from monolayer.records import parse_line

    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the checkpoint's sidecar ({exc})") from None
    doc = parse_line(text.replace("\n", " "), str(path))
    where = str(path)
    if doc.get("schema") != SCHEMA:
        raise DataError(f"{where}: not a monolayer checkpoint sidecar ({SCHEMA} expected)",
                        "delete it to use the checkpoint without one")
    if doc.get("model") != model:
        raise DataError(f"{where}: describes a {doc.get('model')!r} checkpoint, not {model!r}",
                        f"use --model {doc.get('model')}, or delete the sidecar")
    checks = {"weights_sha256": lambda v: isinstance(v, str) and len(v) == 64,
              "normalize": lambda v: v in ("percentile", "none", "sam8"),
              "resize": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 16),
              "params": lambda v: isinstance(v, dict)}
    for name, ok in checks.items():
        if not ok(doc.get(name)):
            raise DataError(f"{where}: field {name!r} is {doc.get(name)!r:.60}", "delete the sidecar or retrain")
    return {**doc, "path": str(path)}


def update_sidecar(weights: Path, *, model: str, weights_sha256: str, normalize: str,
                   params: dict[str, Any]) -> Path:
    """Set ``params`` in the sidecar of ``weights`` (creating it for a checkpoint that has
    none; replacing one that describes other weights), keeping what it says otherwise."""
    try:
        current = read_sidecar(weights, model)
    except DataError:
        current = None  # unreadable or of another model: this one describes the weights now
    if current is None or current.get("weights_sha256") != weights_sha256:
        current = {"architecture": {}, "resize": None, "training_set": None, "params": {}}
    return write_sidecar(weights, model=model, weights_sha256=weights_sha256, normalize=normalize,
                         resize=current.get("resize"), architecture=current.get("architecture") or {},
                         training_set=current.get("training_set"),
                         params={**(current.get("params") or {}), **params})
