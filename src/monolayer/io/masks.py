"""Writing and reading masks: binary (uint8 0/1), instance labels (uint16), score maps (float32).

All writes are atomic and deflate-compressed TIFF; a mask is read back as a
boolean foreground (any non-zero pixel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monolayer.errors import DataError
from monolayer.io.atomic import write_atomic

# Suffixes monolayer gives the files it writes; a mask folder used as ground
# truth is keyed by the file name with these stripped (``set4.labels.tif`` -> ``set4``).
MASK_SUFFIXES = (".labels", ".mask", ".binary")
SCORE_SUFFIX = ".prob"


def _write_tiff(target: Path, array: np.ndarray) -> str:
    """Write ``array`` atomically as a deflate TIFF; return the SHA-256 of the file written
    (hashed before the rename, so the checksum is of exactly the bytes that got the name)."""
    import tifffile

    from monolayer.io.images import sha256_file

    digest: list[str] = []

    def writer(tmp: Path) -> None:
        tifffile.imwrite(tmp, array, compression="zlib", photometric="minisblack")
        digest.append(sha256_file(tmp))

    write_atomic(target, writer)
    return digest[0]


def write_binary_mask(target: Path, mask: np.ndarray) -> str:
    """Write a foreground mask as uint8 0/1; return the file's SHA-256."""
    return _write_tiff(target, np.ascontiguousarray(mask, dtype=bool).astype(np.uint8))


def write_label_image(target: Path, labels: np.ndarray) -> str:
    """Write an instance label image as uint16 (0 = background); return the file's SHA-256."""
    if labels.size and int(labels.max()) > np.iinfo(np.uint16).max:
        raise DataError(f"{target.name}: more than 65535 instances do not fit a uint16 label image")
    return _write_tiff(target, labels.astype(np.uint16))


def write_score_map(target: Path, score: np.ndarray) -> str:
    """Write a per-pixel probability or score map as float32; return the file's SHA-256."""
    return _write_tiff(target, np.asarray(score, dtype=np.float32))


def read_mask_array(path: str | Path) -> np.ndarray:
    """A mask or label image as a 2-D array, values as stored (a palette mask's indices are
    its labels, never its colours; an RGB(A) mask becomes its non-zero pixels, a single-page
    stack its page)."""
    from monolayer.io.images import read_image

    return mask_2d(read_image(path, as_stored=True), path)


def mask_2d(array: np.ndarray, path: str | Path) -> np.ndarray:
    """A mask array as read (:func:`read_mask_array`'s rules) made 2-D."""
    if array.ndim == 3:
        if array.shape[-1] in (3, 4):
            array = array[..., :3].any(axis=-1)
        elif array.shape[0] == 1:
            array = array[0]
        else:
            raise DataError(f"{path}: mask has shape {array.shape}, expected a 2-D image")
    return np.asarray(array)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask or label image as a boolean foreground (non-zero = cell)."""
    return read_mask_array(path) != 0


def mask_key(path: Path) -> str | None:
    """The image stem a mask file belongs to, or None for files that are not masks."""
    stem = path.name
    for suffix in (".tiff", ".tif", ".png"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        return None
    if stem.endswith(SCORE_SUFFIX) or stem.startswith("."):
        return None
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def index_mask_folder(folder: Path) -> dict[str, Path]:
    """Map image stem -> mask file for a folder of masks.

    Where both an instance-label and a binary mask exist for one stem (as
    ``coco2mask --binary`` writes), the label image is used; both have the same
    foreground.
    """
    preference = {".labels": 0, ".mask": 1, "": 2, ".binary": 3}
    chosen: dict[str, tuple[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        key = mask_key(path)
        if key is None:
            continue
        rest = path.name[len(key):].lower().split(".")
        rank = preference.get("." + rest[1] if len(rest) > 2 else "", 2)
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, path)
    return {key: path for key, (_, path) in chosen.items()}
