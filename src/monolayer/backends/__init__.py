"""Registry of segmentation backends.

Listing the registry imports no framework: each backend module is imported only
when that backend is asked for, and a missing framework becomes an
:class:`~monolayer.errors.UnavailableError` (exit 69) naming what to install.
An unknown name is an error listing the valid ones, never a silent default.
"""

from __future__ import annotations

from typing import Any

from monolayer.backends._base import Backend, Prediction
from monolayer.backends._spec import BackendSpec, Option
from monolayer.errors import UsageError

__all__ = ["BACKENDS", "Backend", "BackendSpec", "Option", "Prediction", "create_backend"]


# The registry: one name per backend; its module (monolayer.backends.<name>) declares the
# rest in a SPEC importable without the backend's framework. The first is the default.
MODULES = (
    "classical",
    "sam",
    "cellpose",
    "maskrcnn",
    "unet",
)


def _specs() -> dict[str, BackendSpec]:
    import importlib

    specs = [importlib.import_module(f"monolayer.backends.{name}").SPEC for name in MODULES]
    return {spec.name: spec for spec in specs}


BACKENDS: dict[str, BackendSpec] = _specs()


def create_backend(name: str, **options: Any) -> Backend:
    """Build backend ``name`` with its keyword options (weights are loaded here, once)."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise UsageError(f"unknown model {name!r}", f"choose one of: {', '.join(BACKENDS)}")
    backend_class = spec.load(spec.target)
    return backend_class(**options)
