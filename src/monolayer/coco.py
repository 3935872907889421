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

import math
import re
from collections.abc import Iterable
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


def _shown(value: Any) -> str:
    """A value for a one-line message: as it is, or escaped if it holds a line break or
    another control character (an error line must stay one line)."""
    text = str(value)
    return text if text.isprintable() else repr(text)


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
        from monolayer.records import strict_loads

        doc = strict_loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
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
            image.error = f"{where} (id {_shown(image_id)}): missing 'file_name'"
        elif width is None or height is None:
            image.error = f"{where} ({_shown(image.file_name)}): 'width' and 'height' must be positive integers"
        elif width * height > MAX_PIXELS:
            # A corrupt or hostile entry: rasterising it would allocate width x height.
            image.error = (f"{where} ({_shown(image.file_name)}): claims {width}x{height} px, more than the "
                           f"{MAX_PIXELS} px limit")
        elif image_id in by_id:
            image.error = f"{where} ({_shown(image.file_name)}): duplicate image id {_shown(image_id)}"
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


POLYGON_MARGIN = 1.0
"""Polygons are clipped to the image grown by this many pixels on each side: pycocotools
rasterises at 5x in C ints, so a vertex at 1e300 (or 1e12) overflows and crashes it."""

MAX_POLYGON_COORDINATE = 1e15
"""Beyond this, clipping arithmetic in float64 is no longer exact enough to trust."""

MAX_RUN_CHARS = 7
"""A run length of a compressed RLE in more than 7 six-bit characters (35 bits) cannot
belong to an image of at most 2**28 pixels."""


def _clip_polygon(points: list[tuple[float, float]], box: tuple[float, float, float, float]
                  ) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: ``points`` clipped to the rectangle ``box`` = (x0, y0, x1, y1).

    New vertices lie exactly on the rectangle's edges; the part of the polygon inside
    the rectangle, and so every pixel of the image, is unchanged.
    """
    x0, y0, x1, y1 = box

    def on_vertical(x: float) -> Any:
        def cross(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float]:
            return x, p[1] + (x - p[0]) / (q[0] - p[0]) * (q[1] - p[1])
        return cross

    def on_horizontal(y: float) -> Any:
        def cross(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float]:
            # x is between the end points' (both already inside x0..x1) but for rounding.
            return min(max(p[0] + (y - p[1]) / (q[1] - p[1]) * (q[0] - p[0]), x0), x1), y
        return cross

    edges = ((lambda p: p[0] >= x0, on_vertical(x0)), (lambda p: p[0] <= x1, on_vertical(x1)),
             (lambda p: p[1] >= y0, on_horizontal(y0)), (lambda p: p[1] <= y1, on_horizontal(y1)))
    for inside, cross in edges:
        clipped: list[tuple[float, float]] = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current):
                if not inside(previous):
                    clipped.append(cross(previous, current))
                clipped.append(current)
            elif inside(previous):
                clipped.append(cross(previous, current))
        points = clipped
        if not points:
            break
    return points


def _empty_rle(height: int, width: int) -> Any:
    from pycocotools import mask as mask_utils

    return mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)


def _polygon_rles(polygons: Any, height: int, width: int, where: str) -> list[Any]:
    from pycocotools import mask as mask_utils

    if not polygons:
        raise DataError(f"{where}: empty polygon list")
    box = (-POLYGON_MARGIN, -POLYGON_MARGIN, width + POLYGON_MARGIN, height + POLYGON_MARGIN)
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
        coords = [float(v) for v in poly]
        if any(abs(v) > MAX_POLYGON_COORDINATE for v in coords):
            raise DataError(f"{where}: polygon {k} has a coordinate beyond +-{MAX_POLYGON_COORDINATE:g} px",
                            "are the coordinates in pixels?")
        xs, ys = coords[0::2], coords[1::2]
        if min(xs) >= box[0] and max(xs) <= box[2] and min(ys) >= box[1] and max(ys) <= box[3]:
            parts.append(coords)  # the usual case: handed over untouched
            continue
        clipped = _clip_polygon(list(zip(xs, ys)), box)
        if len(clipped) >= 3:
            parts.append([v for point in clipped for v in point])
    if not parts:  # every part lies outside the image
        return [_empty_rle(height, width)]
    return mask_utils.frPyObjects(parts, height, width)


def decode_counts(counts: str | bytes, where: str = "RLE") -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``), int64.

    Each number is written in 6-bit characters (offset 48): 5 data bits, least
    significant first, and 0x20 when another character follows; 0x10 in the last
    character makes it negative. From the fourth number on, each is a difference to
    the number two places before it. A string that is not such an encoding raises
    :class:`DataError` (pycocotools would read past its end).

    >>> decode_counts("52201")  # 5 zeros, 2 ones, 2 zeros, 0 + 2 ones, 1 + 2 zeros
    array([5, 2, 2, 2, 3])
    """
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise DataError(f"{where}: compressed RLE counts hold non-ASCII characters") from None
    if not counts:
        raise DataError(f"{where}: compressed RLE counts are empty")
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise DataError(f"{where}: compressed RLE counts hold characters outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise DataError(f"{where}: compressed RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > MAX_RUN_CHARS:
        raise DataError(f"{where}: compressed RLE holds a number longer than any image")
    x = np.zeros(len(ends), dtype=np.int64)
    for j in range(int(lengths.max())):
        has = lengths > j
        x[has] += (c[starts[has] + j] & 0x1F) << (5 * j)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])
    runs[2::2] = np.cumsum(x[2::2])
    return runs


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
        # Checked here: pycocotools decodes a short or corrupt string from whatever
        # memory follows it, so the same file gave different masks from run to run.
        runs = decode_counts(counts, where)
        if runs.min() < 0:
            raise DataError(f"{where}: compressed RLE has a negative run length ({int(runs.min())})")
        if int(runs.sum()) != height * width:
            raise DataError(f"{where}: RLE counts cover {int(runs.sum())} px, the image has {height * width}")
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        return {"size": [height, width], "counts": raw}
    raise DataError(f"{where}: RLE 'counts' must be a list or a string")


def annotation_rle(ann: dict[str, Any], height: int, width: int, where: str) -> Any:
    """One annotation's segmentation as a checked pycocotools RLE (compact: not decoded)."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return mask_utils.merge(_polygon_rles(seg, height, width, where))
    if isinstance(seg, dict):
        return _rle(seg, height, width, where)
    raise DataError(f"{where}: 'segmentation' must be polygons or RLE")


def _decode(rle: Any, height: int, width: int, where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    try:
        decoded = mask_utils.decode(rle)
    except Exception as exc:
        raise DataError(f"{where}: cannot decode RLE ({exc})") from None
    if decoded.shape[:2] != (height, width):
        raise DataError(f"{where}: decoded mask has shape {decoded.shape}, image is {height}x{width}")
    return decoded.astype(bool)


def annotation_mask(ann: dict[str, Any], height: int, width: int, where: str) -> np.ndarray:
    """Decode one annotation's segmentation to a boolean mask of the image's shape."""
    return _decode(annotation_rle(ann, height, width, where), height, width, where)


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
    Instances stay run-length encoded until each is painted, so memory does not
    grow with the number of annotations.
    """
    from pycocotools import mask as mask_utils

    height, width = image.height, image.width
    found: list[tuple[Any, Any, int, bool, str]] = []
    for k, ann in enumerate(image.annotations):
        where = f"{_shown(image.file_name)}: annotation {_shown(ann.get('id', f'#{k}'))}"
        rle = annotation_rle(ann, height, width, where)
        found.append((ann.get("id", k), rle, int(mask_utils.area(rle)), bool(ann.get("iscrowd", 0)), where))

    def id_key(item: tuple[Any, ...]) -> tuple[int, Any]:
        ann_id = item[0]
        return (0, ann_id) if isinstance(ann_id, (int, float)) else (1, str(ann_id))

    ordered = sorted(found, key=id_key)
    # Painted run by run in column-major order, as RLE counts run: no full-size mask per instance.
    columns = np.zeros((width, height), dtype=np.uint32)
    flat = columns.reshape(-1)
    paint_order = sorted(range(len(ordered)), key=lambda i: (-ordered[i][2], id_key(ordered[i])))
    for i in paint_order:
        _, rle, _, _, where = ordered[i]
        bounds = np.cumsum(decode_counts(rle["counts"], where)).tolist()
        for start, end in zip(bounds[0::2], bounds[1::2]):
            flat[start:end] = i + 1
    labels = np.ascontiguousarray(columns.T)
    del columns, flat
    crowd = sum(1 for item in ordered if item[3])
    if lazy:
        components, n = _components(labels)
        in_columns = components.T.reshape(-1)  # column-major, as the runs count

        def under(rle: Any, where: str) -> np.ndarray:
            bounds = np.cumsum(decode_counts(rle["counts"], where)).tolist()
            runs = [in_columns[start:end] for start, end in zip(bounds[0::2], bounds[1::2])]
            return np.concatenate(runs) if runs else np.zeros(0, dtype=in_columns.dtype)

        labels = _merge_components(components, n, (under(rle, where) for _, rle, _, _, where in ordered))
        return Rasterized(labels=labels, instances=int(labels.max()), crowd=crowd)
    present = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    return Rasterized(labels=labels, instances=present, crowd=crowd)


def _components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage as ndi

    components, n = ndi.label(labels > 0, structure=np.ones((3, 3), dtype=bool))
    return components, int(n)


def merge_touching(labels: np.ndarray, masks: Iterable[np.ndarray]) -> np.ndarray:
    """Relabel so every group of touching (8-connected) or overlapping instances is one object.

    ``masks`` (each instance's own mask) is read once, one at a time: an iterator
    that decodes them as it goes keeps one mask in memory. Objects are numbered
    1..N in raster order of their first pixel.
    """
    components, n = _components(labels)
    return _merge_components(components, n, (components[mask] for mask in masks))


def _merge_components(components: np.ndarray, n: int, under: Iterable[np.ndarray]) -> np.ndarray:
    """:func:`merge_touching` given, per instance, the component ids under its pixels."""
    parent = list(range(n + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # A multi-part instance ties its separate parts into one object.
    for values in under:
        ids = np.unique(values)
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
