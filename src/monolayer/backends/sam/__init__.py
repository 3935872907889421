"""Segment Anything: this module declares the backend (options, trainer, input); ``model`` runs it.

Importing this module imports no framework; ``from monolayer.backends.sam import X``
of anything else loads :mod:`monolayer.backends.sam.model` (torch, segment-anything).
"""

from __future__ import annotations

from typing import Any

from monolayer.backends._spec import RUNTIME_OPTIONS, BackendSpec, Option

SPEC = BackendSpec(
    name="sam",
    summary="Segment Anything (segment-anything 1.0), zero-shot or fine-tuned",
    target="monolayer.backends.sam.model:SamBackend",
    needs_weights=True,
    requires=("torch", "segment_anything"),
    segment_options=(
        *RUNTIME_OPTIONS,
        Option("mode", str, "promptless (the paper: no prompts, one mask) or auto (automatic mask "
               "generator, background masks rejected).", default="promptless", choices=("promptless", "auto")),
        Option("threshold", float, "Absolute probability threshold for the mask.", default=0.5, sidecar=True,
               bounds=(0.0, 1.0)),
        Option("tile", int, "Process images larger than this many pixels in overlapping tiles.", min=256),
        Option("points_per_side", int, "--mode auto: grid of point prompts per side.", default=32, min=1),
    ),
    train_options=(
        Option("weights", str, "The SAM checkpoint whose mask decoder is fine-tuned (required).",
               metavar="FILE|NAME", short="-w"),
    ),
    trainer="monolayer.training.sam:train_sam",
    # SamPredictor.set_image takes the 8-bit RGB image as it is: so does monolayer.
    preprocess="sam8",
    defaults={"lr": 1e-4, "batch_size": 1},
    train_requires_weights=True,
)


def __getattr__(name: str) -> Any:
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("monolayer.backends.sam.model"), name)
