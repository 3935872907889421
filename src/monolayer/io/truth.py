"""Labelled image sets as truth records, from coco2mask JSON Lines or from a folder.

A truth record names an image and its mask: ``{"image": ..., "mask": ...,
"confluence": ...}``, the fields coco2mask writes. ``train --train``, ``--val``
and ``al-round init --images`` accept either form:

* a JSON Lines file of such records (coco2mask output); error records are skipped;
* a folder holding ``images/`` and ``masks/`` side by side (the layout of
  ``examples/usiigaci``), masks matched to images by file stem
  (``STEM.tif``, ``STEM.labels.tif``, ``STEM.mask.tif`` ...). Every image needs a mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monolayer.errors import DataError, NoInputError
from monolayer.io.inputs import is_image_file
from monolayer.io.masks import index_mask_folder, read_mask
from monolayer.metrics import confluence
from monolayer.records import iter_jsonl


def truth_records(path: Path, *, with_confluence: bool = True) -> list[dict[str, Any]]:
    """Truth records (``image``, ``mask`` and, for folders, ``confluence``) from ``path``."""
    path = Path(path)
    if path.is_dir():
        return _folder_records(path, with_confluence)
    if not path.exists():
        raise NoInputError(f"no such file or folder: {path}",
                           "give coco2mask JSON Lines or a folder with images/ and masks/")
    from monolayer.commands.evaluate import resolve
    from monolayer.io.provenance import verify_file
    from monolayer.schema import check

    records = []
    for number, record in iter_jsonl(path):
        where = f"{path}:{number}"
        if "error" not in record and not ("image" in record and "mask" in record):
            raise DataError(f"{where}: a truth record needs 'image' and 'mask'",
                            "use coco2mask output, or a folder with images/ and masks/")
        check("truth", record, where)
        if "error" in record:
            continue
        # The mask must be the file coco2mask wrote, or the labels are another image's.
        verify_file(resolve(record["mask"], path.parent), record.get("mask_sha256"), where, "mask_sha256")
        records.append(record)
    return records


def _folder_records(folder: Path, with_confluence: bool) -> list[dict[str, Any]]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise NoInputError(f"{folder}: a labelled folder needs images/ and masks/ sub-folders",
                           "or give coco2mask JSON Lines")
    masks = index_mask_folder(masks_dir)
    images = sorted(p for p in images_dir.iterdir() if is_image_file(p))
    if not images:
        raise NoInputError(f"{images_dir}: no images")
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
        raise DataError(f"{folder}: {len(unmatched)} image(s) have no mask in masks/, e.g. {unmatched[0]}",
                        "name masks after their images (STEM.tif, STEM.labels.tif or STEM.mask.tif)")
    records = []
    for image in images:
        record: dict[str, Any] = {"image": str(image), "mask": str(masks[image.stem])}
        if with_confluence:
            record["confluence"] = confluence(read_mask(masks[image.stem]))
        records.append(record)
    return records
