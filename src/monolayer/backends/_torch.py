"""What every PyTorch backend shares: weights, device, precision, seed, record fields.

Imported only when a learned backend is asked for (it imports torch).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

import torch

from monolayer.backends._base import Backend
from monolayer.backends._spec import RuntimeOptions  # noqa: F401 - the learned backends' import path
from monolayer.devices import check_precision, resolve_device, resolve_precision
from monolayer.weights import Weights, resolve


class TorchBackend(Backend):
    """Base of the learned backends: resolves and checks everything before the first image."""

    def __init__(self, runtime: RuntimeOptions) -> None:
        self.runtime = runtime
        self.batch_size = max(1, runtime.batch_size)
        torch.manual_seed(runtime.seed)
        self.device = resolve_device(runtime.device)
        self.precision = resolve_precision(runtime.precision, self.device)
        self.autocast_dtype = check_precision(self.precision, self.device)
        self.weights: Weights = resolve(runtime.weights, self.name)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when asked for, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def describe_with(self, method: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """The record fields naming model, parameters, device and weights."""
        runtime = asdict(self.runtime)
        runtime.pop("weights")
        runtime["device"] = str(self.device)
        runtime["precision_requested"] = runtime["precision"]
        runtime["precision"] = self.precision
        return {"model": self.name, "method": method, "params": {**params, **runtime},
                "weights": self.weights.name or str(self.weights.path),
                "weights_sha256": self.weights.sha256}
