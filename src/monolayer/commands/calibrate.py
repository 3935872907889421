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


def labelled_images(items: Iterable[Any], truth_sources: list[Path], page: int = 0) -> list[Labelled]:
    """The input images with their ground truth, matched as ``evaluate`` matches them
    (checksum, path, then a unique file-name stem). An image without truth is a
    :class:`DataError` naming it: fitting on a silently smaller set is not what was asked."""
    from monolayer.commands.evaluate import load_truth
    from monolayer.io.images import load_image, to_grayscale

    truth = load_truth(truth_sources)
    out: list[Labelled] = []
    seen: dict[str, str] = {}
    for item in items:
        if item.error is not None:
            raise NoInputError(item.error)
        loaded = load_image(item.image, page)
        if loaded.sha256 in seen:
            raise UsageError(f"{item.image} is the same image as {seen[loaded.sha256]}",
                             "give each labelled image once: a duplicate would sit on both sides of a fold")
        seen[loaded.sha256] = item.image
        entry, how = truth.match(item.image, loaded.sha256, Path(item.image).stem)
        if entry is None:
            raise DataError(f"{item.image}: {how}", "every calibration image needs ground truth (--truth)")
        gray = to_grayscale(loaded.array)
        mask = entry.load()
        if mask.shape != gray.shape:
            raise DataError(f"{item.image}: truth mask is {mask.shape[1]}x{mask.shape[0]} px, image is "
                            f"{gray.shape[1]}x{gray.shape[0]} px")
        out.append(Labelled(item.image, loaded.sha256, gray, loaded.array.dtype, np.asarray(mask, bool)))
    return out


def qc_reference(images: list[Labelled]) -> dict[str, Any] | None:
    """The range of image-quality measures over the calibration images (``monolayer.qc``), which
    segment compares each new image with."""
    try:
        from monolayer import qc
    except ImportError:  # pragma: no cover - qc is part of the package
        return None
    return qc.reference_from([qc.measure(x.gray, x.dtype) for x in images])


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
    return {"model": "classical", "method": "phase", "params": asdict(result.params),
            "weights_sha256": None, "qc_reference": qc_reference(images), "calibration": block}


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
            "qc_reference": qc_reference(images), "calibration": block}


def summary_record(doc: dict[str, Any], output: Path, output_sha256: str) -> dict[str, Any]:
    """The one record calibrate prints."""
    from monolayer.records import new_record

    block = doc["calibration"]
    return new_record(KIND, model=doc["model"], method=doc.get("method"), params=doc["params"],
                      output=str(output), output_sha256=output_sha256,
                      weights_sha256=doc.get("weights_sha256"),
                      images=len(block["images"]), folds=len(block["folds"]),
                      calibrated=block["calibrated"],
                      cv_abs_confluence_error=block["cv_abs_confluence_error"], cv_iou=block["cv_iou"],
                      default_abs_confluence_error=block["default_abs_confluence_error"],
                      default_iou=block["default_iou"],
                      train_abs_confluence_error=block["train_abs_confluence_error"],
                      fit_cv_abs_confluence_error=block["fit_cv_abs_confluence_error"],
                      seconds=block["seconds"])
