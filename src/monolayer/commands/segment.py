"""``segment``: images -> binary masks (+ score maps) and one record per image."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.backends import Backend, Prediction
from monolayer.commands._naming import OutputNamer, inside
from monolayer.errors import EXIT_DATA, DataError, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, InternalError, MonolayerError, NoInputError, UsageError
from monolayer.io.images import PREPROCESS_MODES, load_image, normalize, preprocess, resize_longest, to_grayscale
from monolayer.io.inputs import InputItem
from monolayer.io.masks import write_binary_mask, write_score_map
from monolayer.metrics import confluence
from monolayer.records import new_record

KIND = "segment"
SCORE_TOLERANCE = 1e-6
"""How far outside [0, 1] a backend's score may stray (float rounding) before the image fails."""


@dataclass(frozen=True)
class SegmentOptions:
    out: Path
    """The output folder as the user named it (records name masks under it)."""
    save_prob: bool = False
    page: int = 0
    resize: int | None = None
    """Scale images so the longest side is this many px before the model (as in training);
    masks and maps are scaled back, so confluence is still over the original image."""
    root: str | None = None
    """``out`` as an absolute path, fixed by the parent process: where workers write,
    whatever their working folder (a Dask worker's is not ours)."""
    normalize: str = "percentile"
    """What the model is given (a :data:`~monolayer.io.images.PREPROCESS_MODES` name, see
    :func:`~monolayer.io.images.preprocess`): the CLI resolves ``--normalize auto`` to
    the backend's ``SPEC.preprocess``."""

    overlay: bool = False
    """Also write ``STEM.overlay.png``: the image with the mask's outline and its confluence."""
    name_pattern: str | None = None
    """``--name-pattern``: a preset or regex whose named groups give plate, well, site and
    time (see :mod:`monolayer.acquisition`); None: time from the image's tags only."""
    qc_reference: dict[str, list[float]] | None = None
    """The ``qc_reference`` of a calibrated parameters file (``--params``): the range of its
    images' domain statistics, for the ``unlike_calibration`` flag (see :mod:`monolayer.qc`).
    None: the classical default parameters are checked against the development images,
    other models not at all."""

    def __post_init__(self) -> None:
        if self.name_pattern is not None:
            from monolayer.acquisition import compile_pattern

            compile_pattern(self.name_pattern)  # a bad pattern is a usage error before any work
        if self.normalize not in PREPROCESS_MODES:
            raise UsageError(f"unknown input normalisation {self.normalize!r}",
                             f"choose one of: {', '.join(PREPROCESS_MODES)}")

    @property
    def write_root(self) -> str:
        """Where outputs are written: ``root``, else ``out`` made absolute here."""
        return self.root or os.path.abspath(self.out)

    def result_options(self) -> dict[str, Any]:
        """The options that change a result (part of the ``--skip-existing`` key)."""
        return {"page": self.page, "resize": self.resize, "save_prob": self.save_prob,
                "normalize": self.normalize, "name_pattern": self.name_pattern, "overlay": self.overlay}

    def acquisition(self, job: Job) -> dict[str, Any]:
        """Plate, well, site and time of an image (file name, else tags; never mtime)."""
        from monolayer.acquisition import compile_pattern, parse_name, tag_time

        fields: dict[str, Any] = {}
        if self.name_pattern is not None:
            fields = parse_name(job.image, compile_pattern(self.name_pattern), self.name_pattern)
        if "time" not in fields and "elapsed_h" not in fields:
            fields = {**fields, **(tag_time(job.path, self.page) or {"time": None, "time_source": None})}
        return fields


@dataclass(frozen=True)
class Job:
    """One input image with everything a worker (here or on another machine) needs."""

    index: int
    image: str
    """As the user named it: what the record says."""
    path: str
    """Absolute path, to read it from any working folder."""
    stem: str
    """Output file stem, fixed for the whole input list (shards and reruns agree)."""
    error: str | None = None
    exit_code: int = 0


def plan_jobs(items: Iterable[InputItem]) -> list[Job]:
    """Jobs for the whole input list, output stems decided over all of it.

    Stems depend only on the input list, never on which subset a run processes,
    so shards, executors and reruns write the same image to the same file.
    """
    from monolayer.records import printable
    from monolayer.schema import text_problem

    namer = OutputNamer()
    jobs = []
    for index, item in enumerate(items):
        if item.error is not None:
            jobs.append(Job(index, item.image, item.image, "", item.error, item.exit_code))
        elif text_problem(item.image):
            shown = printable(item.image)
            jobs.append(Job(index, shown, shown, "", f"{shown}: the file name is not valid UTF-8, so no "
                            "record could name it (rename the file)", EXIT_DATA))
        else:
            jobs.append(Job(index, item.image, os.path.abspath(item.image), namer.stem(item.image)))
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N) -> (I, N)."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise UsageError(f"--shard {text!r}: I must be between 1 and N",
                         "SLURM: --array=1-N with --shard $SLURM_ARRAY_TASK_ID/N")
    return i, n


def in_shard(job: Job, shard: tuple[int, int]) -> bool:
    """Deterministic split by a hash of the image's absolute path: every image is in
    exactly one of the N shards, whatever order or subset of the list a task sees."""
    i, n = shard
    digest = hashlib.sha256(job.path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n == i - 1


def error_record(image: str, message: str, exit_code: int, model: dict[str, Any]) -> dict[str, Any]:
    """The record of an image that could not be segmented."""
    return new_record(KIND, image=image, error=message, exit_code=exit_code,
                      model=model.get("model"), method=model.get("method"))


@dataclass
class _Loaded:
    index: int
    job: Job
    sha256: str
    gray: np.ndarray
    seconds: float
    dtype: np.dtype = np.dtype(np.float32)
    """The stored array's dtype, before :func:`to_grayscale`: what ``preprocess`` scales by."""


def _load(index: int, job: Job, page: int) -> _Loaded:
    started = time.perf_counter()
    loaded = load_image(job.path, page)
    try:
        gray = to_grayscale(loaded.array)
    except DataError as exc:
        raise DataError(f"{job.image}: {exc.message}", exc.hint) from None
    return _Loaded(index, job, loaded.sha256, gray, time.perf_counter() - started, loaded.array.dtype)


def _at_original_size(prediction: Prediction, shape: tuple[int, int]) -> Prediction:
    """Scale a prediction made on a resized image back to the image's own shape."""
    if prediction.mask.shape == shape:
        return prediction
    from skimage.transform import resize

    if prediction.score is not None:
        score = resize(prediction.score, shape, order=1, preserve_range=True).astype(np.float32)
        if prediction.threshold is not None:
            # The backend's mask is its score thresholded: so is the saved mask of the
            # saved score, pixel for pixel, whoever reads the two files together.
            mask = score >= np.float32(prediction.threshold)
        else:  # instances from flows and such: the mask is scaled on its own
            mask = resize(prediction.mask.astype(np.float32), shape, order=1) >= 0.5
    else:
        score, mask = None, resize(prediction.mask.astype(np.float32), shape, order=1) >= 0.5
    return Prediction(mask=mask, score=score, extras=prediction.extras, threshold=prediction.threshold)


def _honest(prediction: Prediction, image: str, backend: Backend) -> Prediction:
    """``prediction`` if its score map is a score map; a NaN or infinite score (NaN
    weights, a diverged model) would otherwise threshold to "no cell" and report a
    confident confluence. Raises :class:`InternalError` for that image."""
    score = prediction.score
    if score is None:
        return prediction
    values = np.asarray(score)
    if values.dtype.kind not in "biuf":
        raise InternalError(f"{image}: model {backend.name} returned a score map of type {values.dtype}")
    finite = np.isfinite(values)
    if not finite.all():
        raise InternalError(f"{image}: model {backend.name} returned {int((~finite).sum())} NaN or "
                            "infinite score(s); no confluence is reported for this image",
                            "do the weights hold NaN? does the model work on other images?")
    if values.size and (float(values.min()) < -SCORE_TOLERANCE or float(values.max()) > 1 + SCORE_TOLERANCE):
        raise InternalError(f"{image}: model {backend.name} returned scores from {float(values.min()):g} "
                            f"to {float(values.max()):g}, outside [0, 1]", "a bug in the backend: please report it")
    return prediction


def _predict(backend: Backend, batch: list[_Loaded], resize: int | None = None,
             normalize: str = "percentile") -> list[Prediction | Exception]:
    """Predictions for a batch; if the batch fails, each image alone, so one bad image
    cannot take its neighbours down with it."""
    results: list[Prediction | Exception] = []
    for p, x in zip(_predict_raw(backend, batch, resize, normalize), batch):
        if not isinstance(p, Exception):
            try:
                p = _at_original_size(_honest(p, x.job.image, backend), x.gray.shape)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                p = exc
        results.append(p)
    return results


def _predict_raw(backend: Backend, batch: list[_Loaded], resize: int | None,
                 normalize: str = "percentile") -> list[Prediction | Exception]:
    inputs = [resize_longest(preprocess(x.gray, x.dtype, normalize), resize) for x in batch]
    try:
        return list(backend.predict_batch(inputs))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
    out: list[Prediction | Exception] = []
    for image in inputs:
        try:
            out.append(backend.predict(image))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            out.append(exc)
    return out


def qc_reference(options: SegmentOptions, model: dict[str, Any]) -> dict[str, list[float]] | None:
    """What ``unlike_calibration`` compares an image with: the parameters file's reference,
    else the development images' for the classical phase method at its default parameters,
    else nothing (a learned model's training images are not known here)."""
    if options.qc_reference is not None:
        return options.qc_reference
    if model.get("model") == "classical" and model.get("method") == "phase":
        from dataclasses import asdict

        from monolayer.backends.phase import PhaseParams
        from monolayer.qc import DEV_REFERENCE

        params = model.get("params") or {}
        if all(params.get(k) == v for k, v in asdict(PhaseParams()).items()) and "params_file" not in params:
            return DEV_REFERENCE
    return None


def _quality(x: _Loaded, options: SegmentOptions, model: dict[str, Any]) -> dict[str, Any]:
    """The record's ``qc`` (measured on the image as read) and ``flags``."""
    from monolayer import qc

    measured = qc.measure(x.gray, x.dtype)
    return {"qc": measured, "flags": qc.flags(measured, qc_reference(options, model))}


def _write(x: _Loaded, prediction: Prediction, seconds: float, options: SegmentOptions,
           model: dict[str, Any]) -> dict[str, Any]:
    acquired = options.acquisition(x.job)  # before any file: a name that does not match fails here
    started = time.perf_counter()
    quality = _quality(x, options, model)
    height, width = x.gray.shape
    if prediction.mask.shape != (height, width):
        raise InternalError(f"{x.job.image}: model {model['model']} returned a "
                            f"{prediction.mask.shape} mask for a {(height, width)} image")
    root = Path(options.write_root)
    mask_name = f"{x.job.stem}.mask.tif"
    mask_sha256 = write_binary_mask(inside(root, mask_name), prediction.mask)
    prob_name = prob_sha256 = None
    if options.save_prob and prediction.score is not None:
        prob_name = f"{x.job.stem}.prob.tif"
        prob_sha256 = write_score_map(inside(root, prob_name), prediction.score)
    overlay_name = overlay_sha256 = None
    if options.overlay:
        from monolayer.overlay import overlay_image, write_overlay

        overlay_name = f"{x.job.stem}.overlay.png"
        picture = overlay_image(normalize(x.gray), prediction.mask, confluence(prediction.mask))
        overlay_sha256 = write_overlay(inside(root, overlay_name), picture)
    return new_record(
        KIND,
        image=x.job.image,
        image_sha256=x.sha256,
        page=options.page,
        **acquired,
        width=width,
        height=height,
        mask=str(options.out / mask_name),
        mask_sha256=mask_sha256,
        prob=str(options.out / prob_name) if prob_name else None,
        prob_sha256=prob_sha256,
        **({"overlay": str(options.out / overlay_name), "overlay_sha256": overlay_sha256} if overlay_name else {}),
        confluence=confluence(prediction.mask),
        **prediction.extras,
        **model,
        **quality,
        seconds=round(seconds + time.perf_counter() - started, 4),
    )


def _failure(image: str, exc: Exception, model: dict[str, Any]) -> dict[str, Any]:
    if isinstance(exc, MonolayerError):
        return error_record(image, str(exc), exc.exit_code, model)
    if isinstance(exc, OSError):
        return error_record(image, f"{image}: {exc.strerror or exc}", EXIT_IO, model)
    return error_record(image, f"{image}: {type(exc).__name__}: {exc}", EXIT_INTERNAL, model)


def _check_size(x: _Loaded, model: dict[str, Any]) -> None:
    """Refuse an image smaller than the model can measure (a 1 x 1 or a thin strip): the
    classical method's windows and minimum object size would report 0 confluence, a wrong
    number, where an error is the truth."""
    from monolayer.backends import BACKENDS

    spec = BACKENDS.get(str(model.get("model")))
    smallest = spec.min_side if spec is not None else 1
    if min(x.gray.shape) < smallest:
        height, width = x.gray.shape
        raise DataError(f"{x.job.image}: {width}x{height} px is too small for model {model.get('model')} "
                        f"(at least {smallest} px on each side)", "segment the whole field of view")


def process_chunk(chunk: list[Job], backend: Backend, options: SegmentOptions,
                  model: dict[str, Any], model_lock: Any = None, *,
                  cancel: Any = None) -> list[dict[str, Any]]:
    """One record per job, in order: load, predict (as one batch), write; failures become
    error records. Runs wherever the executor puts it (this process, a worker process,
    a Dask worker). With ``model_lock``, only the prediction holds it, so another
    thread's reading and writing of images overlaps this one's model work.

    ``cancel`` (anything with ``is_set()``, e.g. a :class:`threading.Event`) is checked
    before the model runs and before each image's files are written: once it is set,
    nothing more is written (the run that asked for this work has stopped, and its
    lock on the output folder may be gone) and the remaining images get error records."""
    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    results: list[dict[str, Any] | None] = [None] * len(chunk)
    ready: list[_Loaded] = []
    for i, job in enumerate(chunk):
        if job.error is not None:
            results[i] = error_record(job.image, job.error, job.exit_code, model)
            continue
        try:
            loaded = _load(i, job, options.page)
            _check_size(loaded, model)
            ready.append(loaded)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            results[i] = _failure(job.image, exc, model)
    if ready and not cancelled():
        with model_lock or contextlib.nullcontext():
            started = time.perf_counter()
            # Checked again: cancelled while waiting for the model, do not start it.
            predictions = [] if cancelled() else _predict(backend, ready, options.resize, options.normalize)
        share = (time.perf_counter() - started) / len(ready)
        for x, prediction in zip(ready, predictions):
            if cancelled():
                break
            if isinstance(prediction, Exception):
                results[x.index] = _failure(x.job.image, prediction, model)
                continue
            try:
                results[x.index] = _write(x, prediction, x.seconds + share, options, model)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                results[x.index] = _failure(x.job.image, exc, model)
    for x in ready:
        if results[x.index] is None:  # cancelled: not written
            results[x.index] = error_record(x.job.image, f"{x.job.image}: not written, the run was stopped",
                                            EXIT_INTERRUPTED, model)
    return [record for record in results if record is not None]


def batched(items: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    """Consecutive chunks of ``size`` items (itertools.batched needs Python 3.12)."""
    iterator = iter(items)
    while chunk := tuple(itertools.islice(iterator, size)):
        yield chunk


def diameter_from_truth(sources: list[Path]) -> float:
    """Mean equivalent-circle diameter of the labelled cells in instance masks.

    ``sources`` are coco2mask JSON Lines (their ``mask`` files) or folders of
    instance-label images, as the paper measures the diameter on labelled data.
    """
    from monolayer.commands.evaluate import resolve
    from monolayer.io.images import read_image
    from monolayer.io.masks import index_mask_folder
    from monolayer.metrics import mean_diameter
    from monolayer.records import iter_jsonl

    labels = []
    for source in sources:
        if source.is_dir():
            files = list(index_mask_folder(source).values())
        else:
            files = [resolve(r["mask"], source.parent) for _, r in iter_jsonl(source)
                     if "error" not in r and isinstance(r.get("mask"), str)]
        labels.extend(read_image(file) for file in files)
    if not labels:
        raise NoInputError("--truth names no mask files to measure a diameter on")
    return mean_diameter(labels)
