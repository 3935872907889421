"""Choosing the torch device: ``auto`` picks the best available; an unavailable one is an error."""

from __future__ import annotations

from typing import Any

from monolayer.errors import UnavailableError, UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX).

    Elsewhere torch emulates bf16 on CPU, slower than fp32, so ``auto`` keeps fp32 there.
    """
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


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


def resolve_precision(precision: str, device: Any) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 where ``device`` computes it natively, else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def check_precision(precision: str, device: Any) -> Any:
    """The autocast dtype for ``precision`` on ``device`` (None for fp32); ``auto`` resolved first."""
    import torch

    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UnavailableError("--precision bf16: this GPU does not support bfloat16", "use fp32 or auto")
    if device.type == "mps":
        raise UnavailableError("--precision bf16 is not supported on MPS here", "use fp32 or auto")
    # bf16 asked for explicitly on a CPU without native support still runs (emulated, slower):
    # it is a choice, not an error; 'auto' never picks it there.
    return torch.bfloat16
