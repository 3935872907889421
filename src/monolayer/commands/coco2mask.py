"""``coco2mask``: COCO annotations -> uint16 instance-label TIFFs and ground-truth records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolayer.coco import CocoFile, CocoImage, rasterize
from monolayer.commands._naming import OutputNamer, inside
from monolayer.errors import EXIT_DATA, DataError, MonolayerError
from monolayer.io.images import image_size, sha256_file
from monolayer.io.masks import write_binary_mask, write_label_image
from monolayer.metrics import confluence
from monolayer.records import new_record

KIND = "truth"


@dataclass(frozen=True)
class Coco2MaskOptions:
    out: Path
    images: Path | None = None
    lazy: bool = False
    binary: bool = False


def _image_path(images: Path, file_name: str) -> Path:
    """Where an image named in COCO lives under ``images``.

    The name as given (``sub/x.tif``) is tried first, then its last component,
    so a COCO file written on another machine with absolute paths still works.
    """
    direct = images / file_name
    if not Path(file_name).is_absolute() and direct.exists():
        return direct
    return images / Path(file_name.replace("\\", "/")).name


def planned_stems(coco: CocoFile) -> list[str]:
    """The output stem of every convertible image entry, as :func:`coco_to_masks` names them."""
    stems = _stems(coco)
    return [stems[i] for i, image in enumerate(coco.images) if image.error is None]


def _stems(coco: CocoFile) -> dict[int, str]:
    """A unique, safe output stem for every image entry (by position), from the same
    namer segment uses."""
    namer = OutputNamer()
    return {index: namer.stem(image.file_name, f"{index}:{image.id!r}", fallback_id=image.id)
            for index, image in enumerate(coco.images)}


def _convert(image: CocoImage, stem: str, options: Coco2MaskOptions,
             source: Path) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if options.images is not None:
        path = _image_path(options.images, image.file_name)
        height, width = image_size(path)
        if (height, width) != (image.height, image.width):
            raise DataError(f"{path}: image is {width}x{height} px but the COCO file says "
                                 f"{image.width}x{image.height}", "is this the right image folder?")
        fields = {"image": str(path), "image_sha256": sha256_file(path)}
    else:
        fields = {"image": image.file_name}
    result = rasterize(image, lazy=options.lazy)
    mask_path = inside(options.out, f"{stem}.labels.tif")
    mask_sha256 = write_label_image(mask_path, result.labels)
    binary_path = binary_sha256 = None
    if options.binary:
        binary_path = inside(options.out, f"{stem}.binary.tif")
        binary_sha256 = write_binary_mask(binary_path, result.labels > 0)
    return new_record(
        KIND,
        **fields,
        image_id=image.id,
        file_name=image.file_name,
        mask=str(mask_path),
        mask_sha256=mask_sha256,
        binary=str(binary_path) if binary_path else None,
        binary_sha256=binary_sha256,
        width=image.width,
        height=image.height,
        instances=result.instances,
        crowd=result.crowd,
        confluence=confluence(result.labels),
        lazy=options.lazy,
        annotations=str(source),
    )


def coco_to_masks(coco: CocoFile, options: Coco2MaskOptions) -> Iterator[dict[str, Any]]:
    """Yield one truth record per COCO image (an error record for a broken one)."""
    stems = _stems(coco)
    for index, image in enumerate(coco.images):
        if image.error is not None:
            yield new_record(KIND, image=image.file_name or None, image_id=image.id,
                             error=image.error, exit_code=EXIT_DATA)
            continue
        try:
            yield _convert(image, stems[index], options, coco.path)
        except MonolayerError as exc:
            yield new_record(KIND, image=image.file_name, image_id=image.id,
                             error=str(exc), exit_code=exc.exit_code)
