"""Registry of segmentation backends.

Listing the registry imports no framework: each backend module is imported only
when that backend is asked for, and a missing framework becomes an
:class:`~monolayer.errors.UnavailableError` (exit 69) naming what to install.
An unknown name is an error listing the valid ones, never a silent default.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from monolayer.backends._base import Backend, Prediction
from monolayer.errors import UnavailableError, UsageError

__all__ = ["BACKENDS", "Backend", "BackendSpec", "Prediction", "create_backend"]


@dataclass(frozen=True)
class BackendSpec:
    """How to find a backend without importing it."""

    name: str
    summary: str
    target: str | None
    """``module:Class``; None while the backend is not built yet."""
    needs_weights: bool
    requires: tuple[str, ...] = ()
    """Python packages the backend imports (checked without importing them)."""

    def missing(self) -> list[str]:
        """Required packages that are not installed here."""
        import importlib.util

        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def require(self, what: str) -> None:
        """Raise :class:`UnavailableError` (exit 69) naming what to install, if anything is missing."""
        missing = self.missing()
        if missing:
            raise UnavailableError(f"{what} needs {', '.join(missing)}, which is not installed",
                                   "pip install 'monolayer[models]'")


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("classical", "no weights: PHANTAST-style local contrast (default) or the "
                    "paper's Canny baseline", "monolayer.backends.classical:ClassicalBackend", False),
        BackendSpec("sam", "Segment Anything (segment-anything 1.0), zero-shot or fine-tuned",
                    "monolayer.backends.sam:SamBackend", True, ("torch", "segment_anything")),
        BackendSpec("cellpose", "Cellpose 3.1 specialist model (CPnet)",
                    "monolayer.backends.cellpose:CellposeBackend", True, ("torch", "cellpose")),
        BackendSpec("maskrcnn", "Mask R-CNN R50-FPN, one class (torchvision)",
                    "monolayer.backends.maskrcnn:MaskRCNNBackend", True, ("torch", "torchvision")),
        BackendSpec("unet", "U-Net (Ronneberger 2015), 64-1024 channels",
                    "monolayer.backends.unet:UNetBackend", True, ("torch",)),
    )
}


def create_backend(name: str, **options: Any) -> Backend:
    """Build backend ``name`` with its keyword options (weights are loaded here, once)."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise UsageError(f"unknown model {name!r}", f"choose one of: {', '.join(BACKENDS)}")
    if spec.target is None:
        ready = ", ".join(n for n, s in BACKENDS.items() if s.target)
        raise UnavailableError(f"model {name!r} is not available yet in this version",
                               f"available: {ready}")
    spec.require(f"model {name!r}")
    module_name, class_name = spec.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnavailableError(f"model {name!r} needs {exc.name or exc}, which is not installed",
                               "pip install 'monolayer[models]'") from None
    backend_class = getattr(module, class_name)
    return backend_class(**options)
