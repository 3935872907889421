"""Training Mask R-CNN R50-FPN (one class, torchvision) on instance labels.

The paper's detectron2 settings where they carry over: base learning rate 0.00025,
ROI-heads batch of 128 sampled regions per image, SGD with momentum 0.9 and weight
decay 1e-4 (detectron2's defaults), a fixed seed. Images go to the model whole;
torchvision's transform resizes them as at inference (shorter side 800). Each
instance of the label image becomes one target: its mask, its box (with the last
row and column included) and the class "cell". Augmentation: flips and 90-degree
rotations of image and labels together. The checkpoint is the model's state dict,
which ``segment --model maskrcnn --weights OUT`` loads. Without ``--weights`` the
network starts from random initialisation with trainable BatchNorm in the backbone
(no ImageNet backbone is downloaded); to fine-tune, give a checkpoint of the same
architecture (its backbone stays FrozenBatchNorm, as detectron2 and torchvision do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from monolayer.backends.maskrcnn.model import build_model, detect, load_model
from monolayer.devices import resolve_device
from monolayer.training.common import TrainOptions, step, validation_metrics
from monolayer.training.data import Pair, augment, fingerprint
from monolayer.training.loop import run_epochs
from monolayer.weights import load_state_dict, resolve

DEFAULT_LR = 0.00025
DEFAULT_BATCH = 2
ROI_BATCH_PER_IMAGE = 128
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


def targets_from_labels(labels: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Mask R-CNN targets (boxes, labels, masks) for every instance of a label image."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    masks = torch.from_numpy(labels[None] == ids[:, None, None]).to(device)
    boxes = torch.zeros((len(ids), 4), dtype=torch.float32, device=device)
    if len(ids):
        from torchvision.ops import masks_to_boxes

        boxes = masks_to_boxes(masks)
        boxes[:, 2:] += 1  # the last pixel's far edge: a one-pixel cell has a positive-size box
    return {"boxes": boxes, "labels": torch.ones(len(ids), dtype=torch.int64, device=device),
            "masks": masks.to(torch.uint8)}


def train_maskrcnn(train: list[Pair], val: list[Pair] | None, options: TrainOptions, out: Path,
                   emit: Callable[[dict[str, Any]], None], restart: bool = False) -> None:
    """Train (or resume training) Mask R-CNN and write ``out`` after every epoch."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    base = resolve(options.weights, "maskrcnn") if options.weights else None
    # From scratch the backbone needs normalisation that learns (torchvision does the same).
    model = load_model(load_state_dict(base.path), str(base.path)) if base else build_model(trainable_norm=True)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = ROI_BATCH_PER_IMAGE
    model.to(device)
    lr = options.lr or DEFAULT_LR
    batch_size = options.batch_size or DEFAULT_BATCH
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    config = {"model": "maskrcnn", "base_weights": base.sha256 if base else None, "seed": options.seed,
              "batch_size": batch_size, "lr": lr, "augment": options.augment, "resize": options.resize,
              "roi_batch_per_image": ROI_BATCH_PER_IMAGE, "train": fingerprint(train),
              "val": fingerprint(val) if val else None}

    def train_epoch() -> float:
        losses = []
        order = [int(i) for i in rng.permutation(len(train))]
        for start in range(0, len(order), batch_size):
            images, targets = [], []
            for index in order[start:start + batch_size]:
                image, labels = train[index].image, train[index].labels
                if options.augment:
                    image, labels = augment(image, labels, rng)
                images.append(torch.from_numpy(np.ascontiguousarray(image)).to(device)[None].expand(3, -1, -1))
                targets.append(targets_from_labels(labels, device))
            parts = model(images, targets)
            loss = sum(parts.values())
            losses.append(step(optimizer, loss))
        return float(np.mean(losses))

    def validate() -> dict[str, float]:
        return validation_metrics(val or [], lambda p: detect(model, [p.image], device, 0.5, 0.5)[0].mask)

    run_epochs(model=model, optimizer=optimizer, config=config, epochs=options.epochs, out=out, rng=rng,
               train_epoch=train_epoch, validate=validate if val else None, emit=emit, restart=restart)
