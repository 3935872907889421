"""Fine-tuning Segment Anything as the paper does: mask decoder only.

The image encoder and the prompt encoder are frozen; only the mask decoder learns,
with the SAM paper's focal + dice loss (20:1) and Adam. Each training step runs
exactly the promptless pass that ``segment --model sam`` runs (image resized to
1024 and padded, no prompts, one mask, logits upsampled with the padding cropped),
so the checkpoint written (the whole SAM state dict, encoders unchanged) is what
``segment --model sam --weights OUT`` loads.

The frozen encoder is the expensive part, so image embeddings are computed once
per image and orientation (flips and 90-degree rotations give at most 8) and kept
in memory up to :data:`EMBEDDING_CACHE_BYTES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from monolayer.backends.sam.model import IMAGE_SIZE, load_sam, prepare, promptless_logits
from monolayer.devices import resolve_device
from monolayer.training.common import TrainOptions, dice_loss, validation_metrics
from monolayer.training.data import Pair, fingerprint
from monolayer.training.loop import run_epochs
from monolayer.weights import resolve

DEFAULT_LR = 1e-4
DEFAULT_BATCH = 1
FOCAL_WEIGHT = 20.0
"""Focal : dice = 20 : 1, the SAM paper's mask loss."""
EMBEDDING_CACHE_BYTES = 2 << 30


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss (alpha 0.25, gamma 2), mean over pixels."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="mean")


def sam_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return FOCAL_WEIGHT * focal_loss(logits, target) + dice_loss(logits[None], target[None])


def orient(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One of the 8 orientations of a square lattice: rotate k x 90 degrees, then flip."""
    out = np.rot90(array, k)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def train_sam(train: list[Pair], val: list[Pair] | None, options: TrainOptions, out: Path,
              emit: Callable[[dict[str, Any]], None], restart: bool = False) -> None:
    """Fine-tune the mask decoder of the SAM checkpoint ``options.weights``."""
    from segment_anything.utils.transforms import ResizeLongestSide

    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    base = resolve(options.weights, "sam")
    model, arch = load_sam(base.path)
    model.to(device)
    for frozen in (model.image_encoder, model.prompt_encoder):
        frozen.requires_grad_(False)
    lr = options.lr or DEFAULT_LR
    batch_size = options.batch_size or DEFAULT_BATCH
    optimizer = torch.optim.Adam(model.mask_decoder.parameters(), lr=lr)
    config = {"model": "sam", "base_weights": base.sha256, "variant": arch.variant, "seed": options.seed,
              "batch_size": batch_size, "lr": lr, "augment": options.augment, "resize": options.resize,
              "loss": "20 focal + 1 dice", "train": fingerprint(train),
              "val": fingerprint(val) if val else None}
    resize = ResizeLongestSide(IMAGE_SIZE)
    cache: dict[tuple[Any, ...], tuple[torch.Tensor, tuple[int, int]]] = {}
    cached_bytes = 0

    def embed(image: np.ndarray, key: tuple[Any, ...]) -> tuple[torch.Tensor, tuple[int, int]]:
        nonlocal cached_bytes
        if key in cache:
            return cache[key]
        with torch.no_grad():
            x, input_size = prepare(model, resize, image, device)
            embedding = model.image_encoder.eval()(x)
        size = embedding.element_size() * embedding.nelement()
        if cached_bytes + size <= EMBEDDING_CACHE_BYTES:
            cache[key] = (embedding, input_size)
            cached_bytes += size
        return embedding, input_size

    def train_epoch() -> float:
        model.image_encoder.eval()
        losses = []
        order = [int(i) for i in rng.permutation(len(train))]
        for start in range(0, len(order), batch_size):
            optimizer.zero_grad()
            chunk = order[start:start + batch_size]
            total = 0.0
            for index in chunk:
                k, flip = (int(rng.integers(4)), bool(rng.random() < 0.5)) if options.augment else (0, False)
                image = orient(train[index].image, k, flip)
                target = torch.from_numpy(orient(train[index].mask, k, flip).astype(np.float32)).to(device)
                embedding, input_size = embed(image, ("train", index, k, flip))
                logits = promptless_logits(model, embedding, input_size, image.shape)
                loss = sam_loss(logits, target) / len(chunk)
                loss.backward()
                total += float(loss.detach())
            optimizer.step()
            losses.append(total)
        return float(np.mean(losses))

    def predict(pair: Pair) -> np.ndarray:
        with torch.inference_mode():
            embedding, input_size = embed(pair.image, ("val", pair.sha256))
            logits = promptless_logits(model, embedding, input_size, pair.image.shape)
        return (torch.sigmoid(logits) >= 0.5).cpu().numpy()

    def validate() -> dict[str, float]:
        return validation_metrics(val or [], predict)

    run_epochs(model=model, optimizer=optimizer, config=config, epochs=options.epochs, out=out, rng=rng,
               train_epoch=train_epoch, validate=validate if val else None, emit=emit, restart=restart)
