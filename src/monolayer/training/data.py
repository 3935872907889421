"""Training pairs (preprocessed image, instance labels) from truth records, and augmentation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monolayer.commands.evaluate import resolve
from monolayer.errors import DataError, NoInputError
from monolayer.io.images import load_image, preprocess as preprocess_image, resize_longest, to_grayscale
from monolayer.io.masks import read_mask_array
from monolayer.io.truth import truth_records


@dataclass
class Pair:
    image_path: str
    image: np.ndarray   # float32 as segment gives the model (io.images.preprocess), resized
    labels: np.ndarray  # int32 instance labels (0 = background), same shape, resized nearest-neighbour
    sha256: str
    foreground: np.ndarray | None = None
    """The foreground resized by area (anti-aliased, then >= 0.5), which keeps thin gaps
    and edges truer than nearest-neighbour sampling; None when nothing was resized."""

    @property
    def mask(self) -> np.ndarray:
        """The foreground: what U-Net and SAM learn."""
        return self.foreground if self.foreground is not None else self.labels > 0


def read_labels(path: Path) -> np.ndarray:
    """Instance labels from a mask file.

    A label image (coco2mask's ``.labels.tif``, Usiigaci's masks) is kept as it is;
    a binary mask (only 0 and one other value) becomes its connected components,
    which is what a lazy label means for an instance model: each cohesive cluster
    is one object.
    """
    from skimage.measure import label

    array = read_mask_array(path)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"{path}: mask holds NaN or infinite values")
        array = array.round()
    values = np.unique(array)
    if values.size == 1 or (values.size == 2 and values[0] == 0):
        return label(array != 0, connectivity=1).astype(np.int32)
    if values.min() < 0:
        raise DataError(f"{path}: label image has negative labels")
    return array.astype(np.int32)


def load_pairs(path: Path, resize: int | None, preprocess: str = "percentile") -> list[Pair]:
    """Image/label pairs from coco2mask JSON Lines or a folder with images/ and masks/.

    Each image is given to the model as ``segment`` gives it: ``preprocess`` is the
    :func:`monolayer.io.images.preprocess` mode (the backend's ``SPEC.preprocess``), applied
    with the image's stored dtype, then the image is resized as ``segment --resize`` does.
    """
    path = Path(path)
    base = path if path.is_dir() else path.parent
    pairs = []
    for record in truth_records(path, with_confluence=False):
        loaded = load_image(resolve(record["image"], base))
        expected = record.get("image_sha256")
        if expected is not None and loaded.sha256 != expected:
            raise DataError(f"{path}: {record['image']} is not the image its truth record was made for "
                            f"(image_sha256 {expected[:12]}..., the file has {loaded.sha256[:12]}...)",
                            "the image changed since coco2mask ran; rerun it")
        image = preprocess_image(to_grayscale(loaded.array), loaded.array.dtype, preprocess)
        labels = read_labels(resolve(record["mask"], base))
        if labels.shape != image.shape:
            raise DataError(f"{record['mask']}: mask {labels.shape} and image {image.shape} differ in shape")
        image = resize_longest(image, resize, order=1)
        resized = resize_longest(labels, resize, order=0)  # nearest: labels stay labels
        foreground = None
        if resized.shape != labels.shape:
            foreground = resize_longest((labels > 0).astype(np.float32), resize, order=1) >= 0.5
        pairs.append(Pair(str(record["image"]), image.astype(np.float32), resized, loaded.sha256, foreground))
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
