"""``evaluate``: predicted masks against ground truth, matched by image identity.

Identity is, in order of preference: the SHA-256 of the image file (both
records carry it when the images were read), the image's resolved path, and
the image's file-name stem when exactly one truth entry has it. List order is
never used: a shuffled prediction file gives the same evaluation.

A truth entry is never matched to an image it demonstrably does not label: one
whose recorded image checksum differs from the image's (by path: an error, the
image changed; by stem: not a candidate), or whose recorded name has a folder
part the image's path does not end with (COCO ``day1/x.tif`` is not ``day2/x.tif``).
Two sources giving different masks for one checksum or path are refused as
ambiguous, as two truth images with one stem are.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.coco import load_coco, rasterize, safe_stem
from monolayer.errors import EXIT_DATA, EXIT_NO_INPUT, DataError, MonolayerError, NoInputError
from monolayer.io.masks import index_mask_folder, mask_2d, read_mask
from monolayer.metrics import compare
from monolayer.io.provenance import load_verified
from monolayer.records import iter_jsonl, new_record
from monolayer.schema import check, error_code
from monolayer.stats import summarize

KIND = "eval"
SUMMARY_FIELDS = ("iou", "dice", "abs_confluence_error", "confluence_pred", "confluence_true")


def resolve(path: str, base: Path | None) -> Path:
    """A path from a record: as given if it exists (relative to the working folder),
    else relative to the folder of the file the record came from."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base is None:
        return p
    alt = base / p
    return alt if alt.exists() else p


def _real(path: str | None) -> str | None:
    return os.path.realpath(path) if path else None


def _stem(path: str) -> str:
    return safe_stem(path, "")


def _key_stem(key: str) -> str:
    """A mask folder's key (a file name less its suffixes) by segment's naming rule, so
    truth ``well A1.tif`` and prediction ``well_A1.mask.tif`` meet under ``well_A1``."""
    return safe_stem(f"{key}.tif", "")


def _folders(name: str | None) -> tuple[str, ...]:
    """The folder part a recorded image name insists on: a relative name's folders (after any
    ``..``), an absolute name's last folder only (the data may have moved); () when none.

    >>> _folders("day1/x.tif"), _folders("/data/run/day1/x.tif"), _folders("x.tif")
    (('day1',), ('day1',), ())
    """
    if not name:
        return ()
    parts = [p for p in name.replace("\\", "/").split("/")[:-1] if p not in ("", ".")]
    if "/" in name.replace("\\", "/")[:1]:
        return tuple(parts[-1:])
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index(".."):]
    return tuple(parts)


def _in_folders(image: str, folders: tuple[str, ...]) -> bool:
    """Whether the image's path (as given, absolute, or resolved) ends in ``folders``/name."""
    n = len(folders)
    for path in (os.path.abspath(image), os.path.realpath(image)):
        parents = Path(path).parent.parts
        if n <= len(parents) and tuple(parents[len(parents) - n:]) == folders:
            return True
    return False


@dataclass
class TruthEntry:
    """One ground-truth image and how to get its foreground mask."""

    ref: str
    stem: str
    load: Callable[[], np.ndarray]
    image: str | None = None
    sha256: str | None = None
    used: bool = False
    name: str | None = None
    """The image's name as the truth records it (a COCO file_name, a record's image)."""
    mask_file: str | None = None
    """The mask file it is read from (None: rasterised from a COCO file)."""
    key: str = ""
    """Which mask this is: two entries with one key are the same truth (given twice)."""

    def named_folder(self, image: str | None) -> bool:
        """Whether the entry's recorded name has a folder part and the image lies in it."""
        folders = _folders(self.name)
        return bool(image and folders and _in_folders(image, folders))

    def unlike(self, image: str | None, sha256: str | None) -> str | None:
        """Why this entry cannot label the image (its checksum or folder differ), or None."""
        if sha256 and self.sha256 and self.sha256 != sha256:
            return (f"truth {self.ref} is of an image with checksum {self.sha256[:12]}..., this image's is "
                    f"{sha256[:12]}...")
        folders = _folders(self.name)
        if image and folders and not _in_folders(image, folders):
            return f"truth {self.ref} is of {self.name}, in another folder"
        return None


@dataclass
class TruthIndex:
    """Ground truth from one or more sources, looked up by image identity."""

    entries: list[TruthEntry] = field(default_factory=list)
    by_sha: dict[str, list[TruthEntry]] = field(default_factory=dict)
    by_path: dict[str, list[TruthEntry]] = field(default_factory=dict)
    by_stem: dict[str, list[TruthEntry]] = field(default_factory=dict)
    named: list[str] = field(default_factory=list)
    """Every file the truth names (sources, masks, binaries, images, COCO files): never to be
    overwritten by a command's output."""

    def add(self, entry: TruthEntry) -> None:
        if not entry.key:
            entry.key = os.path.realpath(entry.mask_file) if entry.mask_file else entry.ref
        real_image = _real(entry.image)
        for other in self.by_stem.get(entry.stem, []):  # the same truth given twice: once
            if (other.key, other.sha256, _real(other.image)) == (entry.key, entry.sha256, real_image):
                return
        self.entries.append(entry)
        if entry.mask_file:
            self.named.append(entry.mask_file)
        if entry.sha256:
            self.by_sha.setdefault(entry.sha256, []).append(entry)
        if real_image:
            self.by_path.setdefault(real_image, []).append(entry)
        self.by_stem.setdefault(entry.stem, []).append(entry)

    @staticmethod
    def _conflict(entries: list[TruthEntry], by: str) -> str | None:
        keys = {e.key for e in entries}
        if len(keys) < 2:
            return None
        return (f"{len(keys)} truth entries give this image's {by} different masks ({entries[0].ref}, "
                f"{next(e.ref for e in entries if e.key != entries[0].key)}); cannot tell which")

    def match(self, image: str | None, sha256: str | None, stem: str) -> tuple[TruthEntry | None, str]:
        """(entry, how it matched) or (None, why not)."""
        if sha256 and sha256 in self.by_sha:
            entries = self.by_sha[sha256]
            conflict = self._conflict(entries, "checksum")
            return (None, conflict) if conflict else (entries[0], "sha256")
        real = _real(image)
        if real and real in self.by_path:
            entries = self.by_path[real]
            conflict = self._conflict(entries, "path")
            if conflict:
                return None, conflict
            why = entries[0].unlike(None, sha256)  # the path is right by definition; the content?
            if why:
                return None, f"{why}: the file changed since the truth was made"
            return entries[0], "path"
        candidates = self.by_stem.get(stem, [])
        reasons = [why for why in (c.unlike(image, sha256) for c in candidates) if why]
        candidates = [c for c in candidates if c.unlike(image, sha256) is None]
        if reasons and not (len(candidates) == 1 and candidates[0].named_folder(image)):
            # A truth image of this name is known to be another image: a remaining entry that
            # says nothing of its image (a bare mask) may well be of that other one too.
            return None, f"no ground truth for this image ({reasons[0]})"
        if len(candidates) == 1:
            return candidates[0], "stem"
        if len(candidates) > 1:
            return None, f"{len(candidates)} truth images are named {stem!r}; cannot tell which"
        return None, "no ground truth for this image"


def _verified_mask(path: Path, sha256: str | None, where: str) -> np.ndarray:
    """The foreground of the mask at ``path``, checked against its record's SHA-256 (one read)."""
    return mask_2d(load_verified(path, sha256, where, "mask_sha256").array, path) != 0


def _add_jsonl(index: TruthIndex, path: Path) -> None:
    for number, record in iter_jsonl(path):
        where = f"{path}:{number}"
        check("truth", record, where, require=("mask",))
        if "error" in record:
            continue
        mask = record["mask"]
        image = record.get("image")
        mask_path = resolve(mask, path.parent)
        name = image if isinstance(image, str) else mask
        index.named += [str(resolve(record[k], path.parent)) for k in ("image", "binary", "annotations")
                        if isinstance(record.get(k), str)]
        index.add(TruthEntry(ref=str(mask_path), stem=_stem(name),
                             load=lambda p=mask_path, s=record.get("mask_sha256"), w=where: _verified_mask(p, s, w),
                             image=str(resolve(image, path.parent)) if isinstance(image, str) else None,
                             sha256=record.get("image_sha256"),
                             name=image if isinstance(image, str) else None, mask_file=str(mask_path)))


def _add_coco(index: TruthIndex, path: Path) -> None:
    coco = load_coco(path)
    for image in coco.images:
        if image.error is not None:
            continue
        index.add(TruthEntry(ref=f"{path}#{image.file_name}", stem=_stem(image.file_name),
                             load=lambda im=image: rasterize(im).labels > 0, name=image.file_name,
                             key=f"{os.path.realpath(path)}#{image.file_name}"))


def _add_folder(index: TruthIndex, folder: Path) -> None:
    masks = index_mask_folder(folder)
    if not masks and (folder / "masks").is_dir():  # a labelled set: images/ and masks/
        masks = index_mask_folder(folder / "masks")
    if not masks:
        raise NoInputError(f"{folder}: folder holds no masks")
    for stem, mask_path in masks.items():
        index.add(TruthEntry(ref=str(mask_path), stem=_key_stem(stem), load=lambda p=mask_path: read_mask(p),
                             mask_file=str(mask_path)))


def _is_coco(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    try:
        from monolayer.records import strict_loads

        doc = strict_loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and "images" in doc


def load_truth(sources: Iterable[Path]) -> TruthIndex:
    """Build the truth index from coco2mask JSON Lines, COCO files and mask folders."""
    index = TruthIndex()
    for source in sources:
        if not source.exists():
            raise NoInputError(f"{source}: no such file or folder", "check --truth")
        index.named.append(str(source))
        if source.is_dir():
            _add_folder(index, source)
        elif _is_coco(source):
            _add_coco(index, source)
        else:
            _add_jsonl(index, source)
    return index


@dataclass
class Prediction:
    image: str | None
    sha256: str | None
    stem: str
    mask: Path | None
    fields: dict[str, Any]
    error: str | None = None
    exit_code: int = EXIT_DATA
    mask_sha256: str | None = None
    where: str = ""


def predictions_from(source: str) -> Iterator[Prediction]:
    """Predictions from segment JSON Lines (a file or ``-``) or from a folder of masks."""
    path = Path(source)
    if source != "-" and path.is_dir():
        masks = index_mask_folder(path)
        if not masks:
            raise NoInputError(f"{path}: folder holds no masks")
        stems = {mask_path: _key_stem(stem) for stem, mask_path in masks.items()}
        named = Counter(stems.values())
        for mask_path, stem in stems.items():
            if named[stem] > 1:  # 'a b.tif' and 'a_b.tif': either could be scored as the other
                yield Prediction(image=str(mask_path), sha256=None, stem=stem, mask=None, fields={},
                                 error=f"{mask_path}: {named[stem]} prediction masks are named "
                                 f"{stem!r}; cannot tell which")
            else:
                yield Prediction(image=None, sha256=None, stem=stem, mask=mask_path, fields={})
        return
    base = None if source == "-" else path.parent
    for number, record in iter_jsonl(source, errors="yield"):
        where = f"{'<stdin>' if source == '-' else source}:{number}"
        try:
            if isinstance(record, DataError):
                raise record
            check("segment", record, where, require=("mask",))
        except DataError as exc:
            yield Prediction(image=where, sha256=None, stem="", mask=None, fields={}, error=str(exc))
            continue
        image = record.get("image")
        name = image if isinstance(image, str) else where
        carried = {k: record[k] for k in ("model", "method") if k in record}
        if "error" in record:
            yield Prediction(image=name, sha256=None, stem=_stem(name), mask=None, fields=carried,
                             error=f"prediction failed: {record['error']}", exit_code=error_code(record))
            continue
        yield Prediction(image=image if isinstance(image, str) else None,
                         sha256=record.get("image_sha256"), stem=_stem(name),
                         mask=resolve(record["mask"], base), fields=carried,
                         mask_sha256=record.get("mask_sha256"), where=where)


def evaluate(predictions: Iterable[Prediction], truth: TruthIndex,
             allow_missing: bool = False) -> Iterator[dict[str, Any]]:
    """Yield one eval record per prediction, then an error record per unpredicted truth image
    (unless ``allow_missing``)."""
    for pred in predictions:
        label = pred.image or str(pred.mask)
        if pred.error is not None or pred.mask is None:
            yield new_record(KIND, image=label, error=pred.error or f"{label}: no mask",
                             exit_code=pred.exit_code, **pred.fields)
            continue
        entry, how = truth.match(pred.image, pred.sha256, pred.stem)
        if entry is None:
            yield new_record(KIND, image=label, error=f"{label}: {how}", exit_code=EXIT_NO_INPUT,
                             **pred.fields)
            continue
        if entry.used:
            yield new_record(KIND, image=label, error=f"{label}: a second prediction for truth "
                             f"{entry.ref}; each image is evaluated once", exit_code=EXIT_DATA,
                             **pred.fields)
            continue
        entry.used = True
        try:
            predicted = _verified_mask(pred.mask, pred.mask_sha256, pred.where)
            true = entry.load()
            if predicted.shape != true.shape:
                raise DataError(f"{label}: predicted mask is {predicted.shape[1]}x{predicted.shape[0]}"
                                f" px, truth is {true.shape[1]}x{true.shape[0]} px")
            metrics = compare(predicted, true)
        except MonolayerError as exc:
            yield new_record(KIND, image=label, error=str(exc), exit_code=exc.exit_code, **pred.fields)
            continue
        yield new_record(KIND, image=label, truth=entry.ref, mask=str(pred.mask), matched_by=how,
                         width=int(true.shape[1]), height=int(true.shape[0]), **metrics,
                         **pred.fields)
    if not allow_missing:
        for entry in truth.entries:
            if not entry.used:
                yield new_record(KIND, image=entry.image or entry.ref, truth=entry.ref,
                                 error=f"{entry.image or entry.ref}: no prediction for this truth image",
                                 exit_code=EXIT_NO_INPUT)


def summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """n, mean, std, median, IQR... of each metric over the records without errors.

    Consumes ``records`` as a stream, keeping only the metric values (a few floats
    per record), never the records themselves."""
    values: dict[str, list[float]] = {name: [] for name in SUMMARY_FIELDS}
    for record in records:
        if "error" not in record:
            for name in SUMMARY_FIELDS:
                values[name].append(record[name])
    return {name: summarize(column) for name, column in values.items()}
