"""Mask R-CNN R50-FPN: this module declares the backend (options, trainer, input); ``model`` runs it.

Importing this module imports no framework; anything else is loaded from
:mod:`monolayer.backends.maskrcnn.model` (torch, torchvision) on first use.
"""

from __future__ import annotations

from typing import Any

from monolayer.backends._spec import RUNTIME_OPTIONS, BackendSpec, Option

SPEC = BackendSpec(
    name="maskrcnn",
    summary="Mask R-CNN R50-FPN, one class (torchvision)",
    target="monolayer.backends.maskrcnn.model:MaskRCNNBackend",
    needs_weights=True,
    requires=("torch", "torchvision"),
    segment_options=(
        *RUNTIME_OPTIONS,
        Option("threshold", float, "Absolute probability threshold for the mask.", default=0.5, sidecar=True,
               bounds=(0.0, 1.0)),
        Option("score_threshold", float, "Keep instances with at least this confidence.", default=0.5, bounds=(0.0, 1.0),
               sidecar=True),
    ),
    train_options=(
        Option("weights", str, "Checkpoint to fine-tune (same architecture); without it, random "
               "initialisation.", metavar="FILE", short="-w"),
    ),
    trainer="monolayer.training.maskrcnn:train_maskrcnn",
    preprocess="percentile",
    defaults={"lr": 0.00025, "batch_size": 2},
    uncertainty="score",
)


def __getattr__(name: str) -> Any:
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("monolayer.backends.maskrcnn.model"), name)
