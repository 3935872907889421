"""Training pairs (normalised image, foreground mask) from coco2mask records, and augmentation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monolayer.commands.evaluate import resolve
from monolayer.errors import DataError, NoInputError
from monolayer.io.images import load_image, normalize, resize_longest, to_grayscale
from monolayer.io.masks import read_mask
from monolayer.records import iter_jsonl


@dataclass
class Pair:
    image_path: str
    image: np.ndarray  # float32 in [0, 1], resized
    mask: np.ndarray   # bool, same shape
    sha256: str


def load_pairs(path: Path, resize: int | None) -> list[Pair]:
    """Image/mask pairs named by coco2mask JSON Lines (``image`` and ``mask`` fields)."""
    pairs = []
    for number, record in iter_jsonl(path):
        if "error" in record:
            continue
        if not isinstance(record.get("image"), str) or not isinstance(record.get("mask"), str):
            raise DataError(f"{path}:{number}: a training record needs 'image' and 'mask'",
                            "use coco2mask output")
        image_path = resolve(record["image"], path.parent)
        loaded = load_image(image_path)
        image = normalize(to_grayscale(loaded.array))
        mask = read_mask(resolve(record["mask"], path.parent))
        if mask.shape != image.shape:
            raise DataError(f"{path}:{number}: mask {mask.shape} and image {image.shape} differ in shape")
        image = resize_longest(image, resize, order=1)
        mask = resize_longest(mask.astype(np.float32), resize, order=1) >= 0.5
        pairs.append(Pair(str(record["image"]), image.astype(np.float32), mask, loaded.sha256))
    if not pairs:
        raise NoInputError(f"{path}: no image/mask pairs to train on")
    return pairs


def fingerprint(pairs: list[Pair]) -> str:
    """Identifies a training set by content, whatever the order or file names."""
    return hashlib.sha256("".join(sorted(p.sha256 for p in pairs)).encode()).hexdigest()


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Microscopy has no preferred orientation: random flips and 90-degree rotations."""
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def random_crop(image: np.ndarray, mask: np.ndarray, size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop (reflect-padded first when the image is smaller)."""
    h, w = image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="reflect")
        mask = np.pad(mask, ((0, ph), (0, pw)), mode="constant")
        h, w = image.shape
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return image[y:y + size, x:x + size], mask[y:y + size, x:x + size]
