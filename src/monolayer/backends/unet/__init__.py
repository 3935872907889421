"""U-Net: this module declares the backend (options, trainer, input); ``model`` runs it.

Importing this module imports no framework; anything else is loaded from
:mod:`monolayer.backends.unet.model` (torch) on first use.
"""

from __future__ import annotations

from typing import Any

from monolayer.backends._spec import RUNTIME_OPTIONS, BackendSpec, Option

SPEC = BackendSpec(
    name="unet",
    summary="U-Net (Ronneberger 2015), 64-1024 channels",
    target="monolayer.backends.unet.model:UNetBackend",
    needs_weights=True,
    requires=("torch",),
    segment_options=(
        *RUNTIME_OPTIONS,
        Option("threshold", float, "Absolute probability threshold for the mask.", default=0.5, sidecar=True,
               bounds=(0.0, 1.0)),
    ),
    train_options=(
        Option("patch", int, "Random crop size in px.", default=256, min=16),
        Option("crops_per_image", int, "Random crops per image and epoch.", default=4, min=1),
        Option("base_channels", int, "Width; 64 is the paper's 64-1024 network.", default=64, min=1),
    ),
    trainer="monolayer.training.unet:train_unet",
    preprocess="percentile",
    defaults={"lr": 1e-3, "batch_size": 4},
)


def __getattr__(name: str) -> Any:
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("monolayer.backends.unet.model"), name)
