"""What every trainer shares: options, losses, validation metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from monolayer.metrics import compare
from monolayer.training.data import Pair


@dataclass(frozen=True)
class TrainOptions:
    """``monolayer train`` options; each trainer reads those that apply to its model
    (``None`` means the model's own default)."""

    epochs: int
    seed: int = 100
    device: str = "auto"
    batch_size: int | None = None
    lr: float | None = None
    augment: bool = True
    patch: int | None = None
    crops_per_image: int = 4
    base_channels: int = 64
    resize: int | None = None
    weights: str | None = None
    """Starting checkpoint (file or published name): required for sam, optional for
    cellpose and maskrcnn (random initialisation without), not used by unet."""


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss``; returns the loss as a float for the log."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss per sample, averaged; ``logits`` and ``target`` of shape (N, ...)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(dim=1)
    total = p.sum(dim=1) + t.sum(dim=1)
    return (1 - (2 * inter + 1) / (total + 1)).mean()


def validation_metrics(val: list[Pair], predict: Callable[[Pair], np.ndarray]) -> dict[str, float]:
    """Mean IoU and mean absolute confluence error of ``predict``'s foreground on ``val``."""
    results = [compare(predict(p), p.mask) for p in val]
    return {"val_iou": float(np.mean([r["iou"] for r in results])),
            "val_abs_confluence_error": float(np.mean([r["abs_confluence_error"] for r in results]))}
