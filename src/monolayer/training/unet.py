"""Training the paper's U-Net from scratch: BCE + Dice loss, Adam, random crops, flips and rotations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from monolayer.backends.unet import UNet
from monolayer.devices import resolve_device
from monolayer.metrics import compare
from monolayer.training.data import Pair, augment, fingerprint, random_crop
from monolayer.training.loop import run_epochs


@dataclass(frozen=True)
class UNetTrainOptions:
    epochs: int
    seed: int = 100
    device: str = "auto"
    batch_size: int = 4
    lr: float = 1e-3
    augment: bool = True
    patch: int = 256
    crops_per_image: int = 4
    base_channels: int = 64
    bilinear: bool = True
    resize: int | None = None


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    total = p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (total + 1)).mean()


def _predict(model: UNet, image: np.ndarray, device: torch.device) -> np.ndarray:
    h, w = image.shape
    padded = np.pad(image, ((0, -h % 16), (0, -w % 16)), mode="reflect")
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device))
    return torch.sigmoid(logits[0, 0, :h, :w]).cpu().numpy()


def train_unet(train: list[Pair], val: list[Pair] | None, options: UNetTrainOptions, out: Path,
               emit: Callable[[dict[str, Any]], None], restart: bool = False) -> None:
    """Train (or resume training) and write ``out`` after every epoch."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    model = UNet(base_channels=options.base_channels, bilinear=options.bilinear).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    config = {"model": "unet", **{k: v for k, v in asdict(options).items() if k not in ("epochs", "device")},
              "train": fingerprint(train), "val": fingerprint(val) if val else None}

    def train_epoch() -> float:
        crops = []
        for index in rng.permutation(len(train)):
            pair = train[int(index)]
            for _ in range(options.crops_per_image):
                image, mask = random_crop(pair.image, pair.mask, options.patch, rng)
                if options.augment:
                    image, mask = augment(image, mask, rng)
                crops.append((image, mask))
        losses = []
        for start in range(0, len(crops), options.batch_size):
            chunk = crops[start:start + options.batch_size]
            x = torch.from_numpy(np.stack([c[0] for c in chunk]))[:, None].to(device)
            y = torch.from_numpy(np.stack([c[1] for c in chunk]).astype(np.float32))[:, None].to(device)
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def validate() -> dict[str, float]:
        results = [compare(_predict(model, p.image, device) >= 0.5, p.mask) for p in val or []]
        return {"val_iou": float(np.mean([r["iou"] for r in results])),
                "val_abs_confluence_error": float(np.mean([r["abs_confluence_error"] for r in results]))}

    run_epochs(model=model, optimizer=optimizer, config=config, epochs=options.epochs, out=out, rng=rng,
               train_epoch=train_epoch, validate=validate if val else None, emit=emit, restart=restart)
