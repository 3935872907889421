"""``calibrate``: labelled images -> fitted parameters, a cross-validated error and a parameters file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.errors import DataError, NoInputError, UsageError

KIND = "calibrate"


@dataclass
class Labelled:
    """One calibration image: as read, as the model is given it, and its truth."""

    name: str
    sha256: str
    gray: np.ndarray
    dtype: np.dtype
    truth: np.ndarray

    def model_input(self, normalize: str) -> np.ndarray:
        from monolayer.io.images import preprocess

        return preprocess(self.gray, self.dtype, normalize)


IOU_FLOOR = 0.2
"""Below this mean IoU (of what is written, estimated honestly), calibration is refused: the
masks hardly overlap the truth, so a matching confluence is luck, and the parameters measure
nothing (a wrong --truth, random weights, images the model cannot see)."""
SIMILAR_CORRELATION = 0.4
"""Two calibration images whose high-passed content correlates this much (at the best shift of
up to 1/16 of the field) look like the same field of view. Different fields of the development
images: at most 0.23; a copy shifted by a few pixels with a pixel changed: 0.5 and up."""


def _is_params_file(path: Path) -> bool:
    """Whether ``path`` holds a parameters file (``schema`` :data:`monolayer.calibrate.SCHEMA`),
    which a new calibration may replace; anything else is someone's data."""
    from monolayer.calibrate import SCHEMA
    from monolayer.records import strict_loads

    try:
        if not path.is_file() or path.stat().st_size > 16 * 2**20:
            return False
        doc = strict_loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def check_output(out: Path, images: Iterable[str], truth_files: Iterable[Path | str]) -> None:
    """Refuse, before any work, an ``-o`` that cannot or must not be written: a symbolic link, a
    folder, a missing folder, a file that is one of the inputs (an image, a --truth file or any
    file a truth record names: mask, binary, image, COCO file), compared resolved and by file
    identity (hard links too), whether it exists yet or not, and any existing file that is not a
    parameters file (an earlier calibration's may be replaced; nothing else)."""
    import os

    hint = "give -o a new file name, e.g. -o scope1.params.json"
    if out.is_symlink():
        raise UsageError(f"-o {out} is a symbolic link; calibrate will not write through it", hint)
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; -o names the parameters file to write", hint)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o {out}: folder {parent} does not exist", "create it first, or write elsewhere")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"-o {out}: folder {parent} is not writable", "write the parameters file elsewhere")
    real = os.path.realpath(out)
    exists = out.exists()
    for other in (*images, *truth_files):
        same = os.path.realpath(other) == real
        if not same and exists:
            try:
                same = os.path.samefile(out, other)
            except (OSError, ValueError):
                same = False
        if same:
            raise UsageError(f"-o {out} is the input {other}; writing the parameters there would destroy it",
                             hint)
    if exists and not _is_params_file(out):
        raise UsageError(f"-o {out} exists and is not a parameters file; calibrate replaces only an earlier "
                         "calibration's file", hint)


def _truth_files(truth: Any, sources: list[Path]) -> list[str]:
    """Every file the truth comes from or names: the --truth files, the masks, and the images,
    binaries and COCO files its records name."""
    return [str(source) for source in sources if not source.is_dir()] + list(truth.named)


def labelled_images(items: Iterable[Any], truth_sources: list[Path], page: int = 0,
                    out: Path | None = None, min_side: int = 1) -> list[Labelled]:
    """The input images with their ground truth, matched as ``evaluate`` matches them
    (checksum, path, then a unique file-name stem by evaluate's own stem rule). An image
    without truth is a :class:`DataError` naming it: fitting on a silently smaller set is
    not what was asked. Two images matched to one truth entry are refused the same way
    (day1/well_A1.tif and day2/well_A1.tif with one truth well_A1: one would be scored
    against the other's mask), unless all but one matched it by a weaker rule than the
    one that did by checksum or path, in which case those are refused. ``out`` is checked
    by :func:`check_output` once the truth is known, before any image is read."""
    from monolayer.commands.evaluate import _stem, load_truth
    from monolayer.io.images import load_image, to_grayscale

    items = list(items)
    truth = load_truth(truth_sources)
    if out is not None:
        check_output(out, [item.image for item in items], _truth_files(truth, truth_sources))
    loaded_all = []
    seen: dict[str, str] = {}
    claims: dict[int, list[tuple[str, str]]] = {}
    for item in items:
        if item.error is not None:
            raise NoInputError(item.error)
        loaded = load_image(item.image, page)
        if loaded.sha256 in seen:
            raise UsageError(f"{item.image} is the same image as {seen[loaded.sha256]}",
                             "give each labelled image once: a duplicate would sit on both sides of a fold")
        seen[loaded.sha256] = item.image
        entry, how = truth.match(item.image, loaded.sha256, _stem(item.image))
        if entry is None:
            raise DataError(f"{item.image}: {how}", "every calibration image needs ground truth (--truth)")
        claims.setdefault(id(entry), []).append((item.image, how))
        loaded_all.append((item, loaded, entry))
    for item, _, entry in loaded_all:
        claimants = claims[id(entry)]
        if len(claimants) < 2:
            continue
        strong = [name for name, how in claimants if how in ("sha256", "path")]
        how = dict(claimants)[item.image]
        if len(strong) == 1 and how not in ("sha256", "path"):
            raise DataError(f"{item.image}: matched truth {entry.ref} by its name only, but that truth "
                            f"belongs to {strong[0]} (by {dict(claimants)[strong[0]]})",
                            "give each image its own truth, or leave this image out")
        if len(strong) != 1:
            others = [name for name, _ in claimants if name != item.image]
            raise DataError(f"{item.image} and {others[0]} both match truth {entry.ref} (by "
                            f"{how}); cannot tell which image it labels",
                            "rename the images apart, or make the truth with 'coco2mask --images' so it "
                            "names each image's checksum")
    out_images: list[Labelled] = []
    for item, loaded, entry in loaded_all:
        gray = to_grayscale(loaded.array)
        if min(gray.shape) < min_side:
            raise DataError(f"{item.image}: {gray.shape[1]}x{gray.shape[0]} px is too small to calibrate on "
                            f"(segment needs at least {min_side} px on each side)",
                            "calibrate on whole fields of view, as segment will see them")
        mask = entry.load()
        if mask.shape != gray.shape:
            raise DataError(f"{item.image}: truth mask is {mask.shape[1]}x{mask.shape[0]} px, image is "
                            f"{gray.shape[1]}x{gray.shape[0]} px (truth {entry.ref})",
                            "the truth must be a mask of this very image at its full size: check that "
                            "--truth belongs to these images (not resized or cropped copies)")
        out_images.append(Labelled(item.image, loaded.sha256, gray, loaded.array.dtype, np.asarray(mask, bool)))
    check_truth(out_images)
    return out_images


def check_truth(images: list[Labelled]) -> None:
    """Refuse truth that makes the objective meaningless: every mask empty (any method that
    finds nothing scores perfectly) or every mask full (any that finds everything does)."""
    if all(not x.truth.any() for x in images):
        raise DataError("every truth mask is empty: any setting that finds nothing would score perfectly",
                        "calibrate on images with cells, labelled (empty fields may be among them)")
    if all(x.truth.all() for x in images):
        raise DataError("every truth mask is fully foreground: any setting that finds everything would "
                        "score perfectly", "calibrate on images that are not all confluent")


def image_flags(images: list[Labelled]) -> list[list[str]]:
    """Each calibration image's quality flags (``monolayer.qc.flags`` with no reference)."""
    from monolayer import qc

    return [qc.flags(qc.measure(x.gray, x.dtype), None) for x in images]


def _fingerprint(x: Labelled) -> np.ndarray | None:
    """The image's content at about 256 px, background removed, standardised (None if flat)."""
    from scipy import ndimage as ndi

    from monolayer.io.images import normalize

    a = np.asarray(normalize(x.gray), np.float32)
    f = max(1, int(np.ceil(max(a.shape) / 256)))
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    a = a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    a = a - ndi.gaussian_filter(a, 8)
    sd = float(a.std())
    return (a - a.mean()) / sd if sd > 1e-6 else None


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Highest normalised cross-correlation over shifts of up to 1/16 of the field."""
    c = np.fft.irfft2(np.fft.rfft2(a) * np.conj(np.fft.rfft2(b)), s=a.shape) / a.size
    m0, m1 = max(1, a.shape[0] // 16), max(1, a.shape[1] // 16)
    rows, cols = np.r_[0:m0 + 1, -m0:0] % a.shape[0], np.r_[0:m1 + 1, -m1:0] % a.shape[1]
    return float(c[np.ix_(rows, cols)].max())


def _field_key(name: str) -> tuple[str, ...] | None:
    """Which field of view a file name says the image is (an acquisition preset's line, plate,
    well, site and tile; not its time), or None when no preset matches."""
    import os
    import re

    from monolayer.acquisition import PRESETS

    stem = re.sub(r"\.(ome\.)?(tiff?|png|jpe?g)$", "", os.path.basename(name), flags=re.IGNORECASE)
    for preset, pattern in PRESETS.items():
        match = re.match(pattern, stem, re.ASCII)
        if match:
            groups = match.groupdict()
            return (preset, *(str(groups.get(k)) for k in ("line", "plate", "well", "site", "tile")))
    return None


def similar_pairs(images: list[Labelled]) -> list[tuple[int, int, str]]:
    """Pairs of calibration images that look like the same field of view: the same well, site
    and tile by an acquisition preset's name rule (frames of a time-lapse), or near-duplicate
    content (:data:`SIMILAR_CORRELATION`, images of equal size). Such images are not independent:
    the cross-validated error is optimistic when they fall on both sides of a fold."""
    keys = [_field_key(x.name) for x in images]
    prints: list[np.ndarray | None] = [None] * len(images)
    pairs = []
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            if keys[i] is not None and keys[i] == keys[j]:
                pairs.append((i, j, "the same well, site and tile by their names"))
                continue
            if images[i].gray.shape != images[j].gray.shape:
                continue
            for k in (i, j):
                if prints[k] is None:
                    prints[k] = _fingerprint(images[k])
            a, b = prints[i], prints[j]
            if a is not None and b is not None:
                r = _correlation(a, b)
                if r >= SIMILAR_CORRELATION:
                    pairs.append((i, j, f"near-duplicate content (correlation {r:.2f})"))
    return pairs


def qc_reference(images: list[Labelled]) -> dict[str, Any]:
    """The range of image-quality measures over the calibration images (``monolayer.qc``), which
    segment compares each new image with."""
    from monolayer import qc

    return qc.reference_from([qc.measure(x.gray, x.dtype) for x in images])


def qc_fields(images: list[Labelled]) -> dict[str, Any]:
    """The file's ``qc_reference`` and the ``qc_version`` it was measured by. A reference naming
    no domain measure (every image flat) would leave segment nothing to compare: refused."""
    from monolayer import qc

    reference = qc_reference(images)
    if not set(reference) & set(qc.DOMAIN):
        raise DataError("the calibration images give no image-quality reference (all flat?)",
                        "calibrate on images of cells")
    return {"qc_reference": reference, "qc_version": qc.QC_VERSION}


def assess(images: list[Labelled], doc: dict[str, Any], warn: Callable[[str], None],
           min_iou: float = IOU_FLOOR) -> None:
    """Judge a calibration before its file is written: each image's own quality flags and the
    pairs that look like one field of view (both warned about and kept in the file's
    ``calibration`` block), and a :class:`DataError` when what would be written is meaningless:
    its honestly estimated mean IoU (the fitted parameters' cross-validated IoU, or the
    defaults' IoU when they are kept) below ``min_iou`` (:data:`IOU_FLOOR` unless given)."""
    block = doc["calibration"]
    flags = image_flags(images)
    for entry, flagged in zip(block["images"], flags):
        entry["flags"] = flagged
    for x, flagged in zip(images, flags):
        if flagged:
            warn(f"calibration image {x.name} is flagged {', '.join(flagged)}: check it by eye; an image "
                 "unlike the ones you will segment pulls the fit")
    pairs = similar_pairs(images)
    block["similar_images"] = [{"images": [images[i].name, images[j].name], "why": why} for i, j, why in pairs]
    for i, j, why in pairs:
        warn(f"{images[i].name} and {images[j].name} look like the same field of view ({why}): they "
             "are not independent, so the cross-validated error is optimistic; label other fields")
    written = block["fit_cv_iou"] if block["calibrated"] else block["default_iou"]
    what = "the fitted parameters' cross-validated" if block["calibrated"] else "the default parameters'"
    if not written >= min_iou:
        raise DataError(f"calibration is meaningless here: {what} mean IoU with the truth is {written:.3f}, "
                        f"below {min_iou} (the masks hardly overlap the labelled cells); no file written",
                        "check that --truth labels these very images, and the weights; or label the "
                        "images more completely (--min-iou 0 accepts it)")


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def calibration_block(images: list[Labelled], result: Any, seconds: float) -> dict[str, Any]:
    """How the parameters were obtained: images, folds, and the per-image errors."""
    return {
        "images": [{"image": x.name, "image_sha256": x.sha256, "cv_abs_confluence_error": e, "cv_iou": j,
                    "default_abs_confluence_error": de, "default_iou": dj}
                   for x, e, j, de, dj in zip(images, result.cv_errors, result.cv_ious,
                                              result.default_errors, result.default_ious)],
        "folds": result.folds,
        "calibrated": result.calibrated,
        "cv_abs_confluence_error": _mean(result.cv_errors),
        "cv_iou": _mean(result.cv_ious),
        "default_abs_confluence_error": _mean(result.default_errors),
        "default_iou": _mean(result.default_ious),
        "train_abs_confluence_error": _mean(result.train_errors),
        "train_iou": _mean(result.train_ious),
        "fit_cv_abs_confluence_error": _mean(result.fit_cv_errors),
        "fit_cv_iou": _mean(result.fit_cv_ious),
        "seconds": round(seconds, 3),
    }


def calibrate_classical(images: list[Labelled], *, normalize: str = "percentile",
                        progress: Callable[[str], None] | None = None,
                        ladders: dict[str, tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """The phase method's parameters fitted to ``images``: the parameters document."""
    from dataclasses import asdict

    from monolayer.calibrate import calibrate_phase

    started = time.perf_counter()
    result = calibrate_phase([x.model_input(normalize) for x in images], [x.truth for x in images],
                             progress, ladders)
    block = calibration_block(images, result, time.perf_counter() - started)
    block["fold_params"] = [asdict(p) for p in result.fold_params]
    block["fitted_params"] = asdict(result.fitted)
    block["normalize"] = normalize
    block["resize"] = None  # the classical search runs at full size
    return {"model": "classical", "method": "phase", "params": asdict(result.params),
            "weights_sha256": None, **qc_fields(images), "calibration": block}


def probability_maps(backend: Any, images: list[Labelled], *, normalize: str, resize: int | None,
                     progress: Callable[[str], None] | None = None) -> list[np.ndarray]:
    """Each image's probability map at its own size, by segment's own prediction path."""
    from monolayer.commands.segment import Job, _Loaded, _predict

    maps = []
    for i, x in enumerate(images):
        if progress is not None:
            progress(f"model: image {i + 1}/{len(images)}")
        job = Job(i, x.name, x.name, "")
        [prediction] = _predict(backend, [_Loaded(i, job, x.sha256, x.gray, 0.0, x.dtype)], resize, normalize)
        if isinstance(prediction, Exception):
            raise prediction
        if prediction.score is None or prediction.threshold is None:
            raise UsageError(f"model {backend.name} in this mode gives no probability map to threshold",
                             "calibrate sam in its promptless mode")
        maps.append(np.asarray(prediction.score, np.float32))
    return maps


def calibrate_learned(backend: Any, described: dict[str, Any], images: list[Labelled], *,
                      normalize: str, resize: int | None, model_params: dict[str, Any],
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The probability threshold of a learned model fitted to ``images``: the parameters document.

    ``model_params`` are the other option values the maps were made with (e.g. Mask R-CNN's
    score threshold): the file carries them, so segment reproduces the calibrated setup."""
    from monolayer.calibrate import calibrate_threshold

    started = time.perf_counter()
    maps = probability_maps(backend, images, normalize=normalize, resize=resize, progress=progress)
    default = float(described.get("params", {}).get("threshold", 0.5))
    result = calibrate_threshold(maps, [x.truth for x in images], default, progress)
    block = calibration_block(images, result, time.perf_counter() - started)
    block["fold_params"] = [{"threshold": t} for t in result.fold_params]
    block["fitted_params"] = {"threshold": result.fitted}
    block["default_threshold"] = default
    block["normalize"] = normalize
    block["resize"] = resize
    return {"model": described["model"], "method": described.get("method"),
            "params": {**model_params, "threshold": result.params},
            "weights_sha256": described.get("weights_sha256"), "weights": described.get("weights"),
            **qc_fields(images), "calibration": block}


def summary_record(doc: dict[str, Any], output: Path, output_sha256: str) -> dict[str, Any]:
    """The one record calibrate prints (fields: ``schema.py``, kind ``calibrate``)."""
    from monolayer.records import new_record

    block = doc["calibration"]
    flagged = {entry["image"]: entry["flags"] for entry in block["images"] if entry.get("flags")}
    return new_record(KIND, model=doc["model"], method=doc.get("method"), params=doc["params"],
                      output=str(output), output_sha256=output_sha256,
                      weights_sha256=doc.get("weights_sha256"),
                      images=len(block["images"]), folds=len(block["folds"]),
                      calibrated=block["calibrated"],
                      written="fitted" if block["calibrated"] else "default",
                      cv_abs_confluence_error=block["cv_abs_confluence_error"], cv_iou=block["cv_iou"],
                      fitted_params_cv_abs_confluence_error=block["fit_cv_abs_confluence_error"],
                      fitted_params_cv_iou=block["fit_cv_iou"],
                      default_abs_confluence_error=block["default_abs_confluence_error"],
                      default_iou=block["default_iou"],
                      train_abs_confluence_error=block["train_abs_confluence_error"],
                      image_flags=flagged, similar_images=len(block.get("similar_images", [])),
                      seconds=block["seconds"])


def summary_line(record: dict[str, Any]) -> str:
    """The record in words, for stderr: which parameters were written and what each number is."""
    kept = ("the fitted parameters" if record["calibrated"]
            else "the defaults (the fit did not beat them out of sample)")
    return (f"wrote {kept} to {record['output']}; calibration procedure, cross-validated: mean |confluence "
            f"error| {record['cv_abs_confluence_error']:.4f} (IoU {record['cv_iou']:.3f}); the fitted "
            f"parameters, cross-validated: {record['fitted_params_cv_abs_confluence_error']:.4f}; the defaults "
            f"on these images: {record['default_abs_confluence_error']:.4f}")
