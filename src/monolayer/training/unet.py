"""Training the paper's U-Net from scratch: BCE + Dice loss, Adam, random crops, flips and rotations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from monolayer.backends.unet.model import UNet
from monolayer.devices import resolve_device
from monolayer.training.common import TrainOptions, dice_loss, step, validation_metrics
from monolayer.training.data import Pair, augment, fingerprint, random_crop
from monolayer.training.loop import run_epochs

DEFAULT_LR = 1e-3
DEFAULT_BATCH = 4
DEFAULT_PATCH = 256


def _predict(model: UNet, image: np.ndarray, device: torch.device) -> np.ndarray:
    h, w = image.shape
    padded = np.pad(image, ((0, -h % 16), (0, -w % 16)), mode="reflect")
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device))
    return torch.sigmoid(logits[0, 0, :h, :w]).cpu().numpy()


def train_unet(train: list[Pair], val: list[Pair] | None, options: TrainOptions, out: Path,
               emit: Callable[[dict[str, Any]], None], restart: bool = False) -> None:
    """Train (or resume training) and write ``out`` after every epoch."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    lr = options.lr or DEFAULT_LR
    batch_size = options.batch_size or DEFAULT_BATCH
    patch = options.patch or DEFAULT_PATCH
    model = UNet(base_channels=options.base_channels, bilinear=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    config = {"model": "unet", "seed": options.seed, "batch_size": batch_size, "lr": lr,
              "augment": options.augment, "patch": patch, "crops_per_image": options.crops_per_image,
              "base_channels": options.base_channels, "bilinear": True, "resize": options.resize,
              "train": fingerprint(train), "val": fingerprint(val) if val else None}

    def train_epoch() -> float:
        crops = []
        for index in rng.permutation(len(train)):
            pair = train[int(index)]
            for _ in range(options.crops_per_image):
                image, mask = random_crop(pair.image, pair.mask, patch, rng)
                if options.augment:
                    image, mask = augment(image, mask, rng)
                crops.append((image, mask))
        losses = []
        for start in range(0, len(crops), batch_size):
            chunk = crops[start:start + batch_size]
            x = torch.from_numpy(np.stack([c[0] for c in chunk]))[:, None].to(device)
            y = torch.from_numpy(np.stack([c[1] for c in chunk]).astype(np.float32))[:, None].to(device)
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
            losses.append(step(optimizer, loss))
        return float(np.mean(losses))

    def validate() -> dict[str, float]:
        return validation_metrics(val or [], lambda p: _predict(model, p.image, device) >= 0.5)

    run_epochs(model=model, optimizer=optimizer, config=config, epochs=options.epochs, out=out, rng=rng,
               train_epoch=train_epoch, validate=validate if val else None, emit=emit, restart=restart)
