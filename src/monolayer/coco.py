"""COCO instance annotations -> instance label images and ground-truth confluence.

Handles polygons (several parts per instance), RLE (compressed and
uncompressed) and ``iscrowd`` regions. Overlapping instances are resolved
deterministically: larger instances are painted first and smaller ones on top,
so a small cell lying on a large one keeps its pixels; ties go by annotation id.
Confluence is the union of all instances over the image area, so overlaps are
never counted twice.

"Lazy" (goal-dependent) labels merge every group of touching or overlapping
instances into one object, as a person labelling clusters instead of cells would.
The foreground, and so the confluence, is the same as with exact labels.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.errors import DataError, NoInputError
from monolayer.io.images import MAX_PIXELS


@dataclass
class CocoImage:
    """One image entry of a COCO file with its annotations (in file order)."""

    id: Any
    file_name: str
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class CocoFile:
    """A parsed COCO file: images in file order, and problems that concern no single image."""

    path: Path
    images: list[CocoImage]
    warnings: list[str]


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        return None
    return int(value) if value > 0 else None


def load_coco(path: str | Path) -> CocoFile:
    """Parse and check a COCO instances file.

    A file that is not a COCO document at all raises :class:`DataError`; an
    image entry that is broken is kept with ``error`` set, so the other images
    can still be converted.
    """
    p = Path(path)
    if not p.exists():
        raise NoInputError(f"{p}: no such file")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not a JSON file ({exc})", "expected COCO instances JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{p}: no 'images' list", "expected COCO instances JSON")
    annotations = doc.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{p}: 'annotations' is not a list")

    images: list[CocoImage] = []
    by_id: dict[Any, CocoImage] = {}
    warnings: list[str] = []
    for index, entry in enumerate(doc["images"]):
        where = f"{p}: images[{index}]"
        if not isinstance(entry, dict):
            warnings.append(f"{where}: not an object, skipped")
            continue
        image_id = entry.get("id")
        file_name = entry.get("file_name")
        width, height = _positive_int(entry.get("width")), _positive_int(entry.get("height"))
        image = CocoImage(id=image_id, file_name=file_name if isinstance(file_name, str) else "",
                          width=width or 0, height=height or 0)
        if isinstance(image_id, (dict, list)) or image_id is None or isinstance(image_id, bool):
            image.error = f"{where}: missing or invalid 'id'"
        elif not image.file_name:
            image.error = f"{where} (id {image_id}): missing 'file_name'"
        elif width is None or height is None:
            image.error = f"{where} ({image.file_name}): 'width' and 'height' must be positive integers"
        elif width * height > MAX_PIXELS:
            # A corrupt or hostile entry: rasterising it would allocate width x height.
            image.error = (f"{where} ({image.file_name}): claims {width}x{height} px, more than the "
                           f"{MAX_PIXELS} px limit")
        elif image_id in by_id:
            image.error = f"{where} ({image.file_name}): duplicate image id {image_id}"
        if image.error is None:
            by_id[image_id] = image
        images.append(image)

    orphans = 0
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            warnings.append(f"{p}: annotations[{index}]: not an object, skipped")
            continue
        target = by_id.get(ann.get("image_id")) if not isinstance(ann.get("image_id"), (dict, list)) else None
        if target is None:
            orphans += 1
            continue
        target.annotations.append(ann)
    if orphans:
        warnings.append(f"{p}: {orphans} annotation(s) name an image id that is not in 'images', ignored")
    return CocoFile(path=p, images=images, warnings=warnings)


def _polygon_rles(polygons: Any, height: int, width: int, where: str) -> list[Any]:
    from pycocotools import mask as mask_utils

    if not polygons:
        raise DataError(f"{where}: empty polygon list")
    parts = []
    for k, poly in enumerate(polygons):
        if not isinstance(poly, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
            raise DataError(f"{where}: polygon {k} is not a list of numbers")
        if len(poly) < 6 or len(poly) % 2:
            raise DataError(f"{where}: polygon {k} has {len(poly)} coordinates; "
                            "a polygon needs at least 3 x,y points")
        if not all(math.isfinite(v) for v in poly):
            raise DataError(f"{where}: polygon {k} has a non-finite coordinate")
        parts.append([float(v) for v in poly])
    return mask_utils.frPyObjects(parts, height, width)


def _rle(seg: dict[str, Any], height: int, width: int, where: str) -> Any:
    from pycocotools import mask as mask_utils

    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and list(size) == [height, width]):
        raise DataError(f"{where}: RLE size {size} does not match the image ({height}x{width})")
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise DataError(f"{where}: uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise DataError(f"{where}: RLE counts cover {sum(counts)} px, the image has {height * width}")
        return mask_utils.frPyObjects(seg, height, width)
    if isinstance(counts, (str, bytes)):
        raw = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
        return {"size": [height, width], "counts": raw}
    raise DataError(f"{where}: RLE 'counts' must be a list or a string")


def annotation_mask(ann: dict[str, Any], height: int, width: int, where: str) -> np.ndarray:
    """Decode one annotation's segmentation to a boolean mask of the image's shape."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        rle = mask_utils.merge(_polygon_rles(seg, height, width, where))
    elif isinstance(seg, dict):
        rle = _rle(seg, height, width, where)
    else:
        raise DataError(f"{where}: 'segmentation' must be polygons or RLE")
    try:
        decoded = mask_utils.decode(rle)
    except Exception as exc:
        raise DataError(f"{where}: cannot decode RLE ({exc})") from None
    if decoded.shape[:2] != (height, width):
        raise DataError(f"{where}: decoded mask has shape {decoded.shape}, image is {height}x{width}")
    return decoded.astype(bool)


@dataclass
class Rasterized:
    """Instance labels of one image and what was counted."""

    labels: np.ndarray
    instances: int
    crowd: int


def rasterize(image: CocoImage, lazy: bool = False) -> Rasterized:
    """Instance label image (uint32, 0 = background) of one COCO image.

    Raises :class:`DataError` naming the annotation if any segmentation is broken:
    a ground truth missing one cell would silently bias every metric built on it.
    """
    height, width = image.height, image.width
    decoded: list[tuple[Any, np.ndarray, bool]] = []
    for k, ann in enumerate(image.annotations):
        where = f"{image.file_name}: annotation {ann.get('id', f'#{k}')}"
        mask = annotation_mask(ann, height, width, where)
        decoded.append((ann.get("id", k), mask, bool(ann.get("iscrowd", 0))))

    def id_key(item: tuple[Any, np.ndarray, bool]) -> tuple[int, Any]:
        ann_id = item[0]
        return (0, ann_id) if isinstance(ann_id, (int, float)) else (1, str(ann_id))

    ordered = sorted(decoded, key=id_key)
    labels = np.zeros((height, width), dtype=np.uint32)
    paint_order = sorted(range(len(ordered)),
                         key=lambda i: (-int(ordered[i][1].sum()), id_key(ordered[i])))
    for i in paint_order:
        labels[ordered[i][1]] = i + 1
    crowd = sum(1 for _, _, is_crowd in ordered if is_crowd)
    if lazy:
        labels = merge_touching(labels, [m for _, m, _ in ordered])
        return Rasterized(labels=labels, instances=int(labels.max()), crowd=crowd)
    present = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    return Rasterized(labels=labels, instances=present, crowd=crowd)


def merge_touching(labels: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Relabel so every group of touching (8-connected) or overlapping instances is one object.

    Objects are numbered 1..N in raster order of their first pixel.
    """
    from scipy import ndimage as ndi

    components, n = ndi.label(labels > 0, structure=np.ones((3, 3), dtype=bool))
    parent = list(range(n + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # A multi-part instance ties its separate parts into one object.
    for mask in masks:
        ids = np.unique(components[mask])
        ids = ids[ids > 0]
        for other in ids[1:]:
            a, b = find(int(ids[0])), find(int(other))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(n + 1)], dtype=np.int64)
    merged = roots[components]
    flat = merged.ravel()
    nonzero = flat[flat > 0]
    _, first = np.unique(nonzero, return_index=True)
    order = nonzero[np.sort(first)]
    remap = np.zeros(n + 1, dtype=np.uint32)
    remap[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    return remap[merged]


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_stem(file_name: str, image_id: Any) -> str:
    """A file-name stem that cannot leave the output folder.

    Only the last path component of ``file_name`` is used (``../../x.tif`` and
    ``/abs/x.tif`` both give ``x``); odd characters become ``_``.

    >>> safe_stem("../../etc/x.tif", 3), safe_stem("/abs/dir/a b.png", 4), safe_stem("..", 5)
    ('x', 'a_b', 'image-5')
    """
    base = re.split(r"[\\/]", file_name)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _UNSAFE.sub("_", stem).strip("._") or ""
    return stem if stem else _UNSAFE.sub("_", f"image-{image_id}")
