"""Choosing the torch device: ``auto`` picks the best available; an unavailable one is an error."""

from __future__ import annotations

from typing import Any

from monolayer.errors import UnavailableError, UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")


def resolve_device(spec: str) -> Any:
    """A ``torch.device`` for ``auto|cpu|cuda|cuda:N|mps``; never a silent fallback."""
    import torch

    name = spec.split(":")[0]
    if name not in DEVICES:
        raise UsageError(f"unknown device {spec!r}", f"choose one of: {', '.join(DEVICES)}")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("--device cuda: no CUDA device is available here", "use --device cpu")
    if name == "mps" and not mps_ok:
        raise UnavailableError("--device mps: Apple MPS is not available here", "use --device cpu")
    return torch.device(spec)


def check_precision(precision: str, device: Any) -> Any:
    """The autocast dtype for ``precision`` on ``device`` (None for fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UnavailableError("--precision bf16: this GPU does not support bfloat16", "use fp32")
    if device.type == "mps":
        raise UnavailableError("--precision bf16 is not supported on MPS here", "use fp32")
    return torch.bfloat16
