"""``segment``: images -> binary masks (+ score maps) and one record per image."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.backends import Backend, Prediction
from monolayer.commands._naming import OutputNamer, inside
from monolayer.errors import EXIT_INTERNAL, InternalError, MonolayerError, NoInputError
from monolayer.io.images import load_image, normalize, resize_longest, to_grayscale
from monolayer.io.inputs import InputItem
from monolayer.io.masks import write_binary_mask, write_score_map
from monolayer.metrics import confluence
from monolayer.records import new_record

KIND = "segment"


@dataclass(frozen=True)
class SegmentOptions:
    out: Path
    save_prob: bool = False
    page: int = 0
    resize: int | None = None
    """Scale images so the longest side is this many px before the model (as in training);
    masks and maps are scaled back, so confluence is still over the original image."""


def error_record(image: str, message: str, exit_code: int, model: dict[str, Any]) -> dict[str, Any]:
    """The record of an image that could not be segmented."""
    return new_record(KIND, image=image, error=message, exit_code=exit_code,
                      model=model.get("model"), method=model.get("method"))


@dataclass
class _Loaded:
    index: int
    item: InputItem
    sha256: str
    gray: np.ndarray
    seconds: float


def _load(index: int, item: InputItem, page: int) -> _Loaded:
    started = time.perf_counter()
    loaded = load_image(item.image, page)
    gray = to_grayscale(loaded.array)
    return _Loaded(index, item, loaded.sha256, gray, time.perf_counter() - started)


def _at_original_size(prediction: Prediction, shape: tuple[int, int]) -> Prediction:
    """Scale a prediction made on a resized image back to the image's own shape."""
    if prediction.mask.shape == shape:
        return prediction
    from skimage.transform import resize

    if prediction.score is not None:
        score = resize(prediction.score, shape, order=1, preserve_range=True).astype(np.float32)
        # Keep the invariant mask == score >= threshold where the backend had one.
        mask = resize(prediction.mask.astype(np.float32), shape, order=1) >= 0.5
    else:
        score, mask = None, resize(prediction.mask.astype(np.float32), shape, order=1) >= 0.5
    return Prediction(mask=mask, score=score, extras=prediction.extras)


def _predict(backend: Backend, batch: list[_Loaded], resize: int | None = None) -> list[Prediction | Exception]:
    """Predictions for a batch; if the batch fails, each image alone, so one bad image
    cannot take its neighbours down with it."""
    out = _predict_raw(backend, batch, resize)
    return [p if isinstance(p, Exception) else _at_original_size(p, x.gray.shape)
            for p, x in zip(out, batch)]


def _predict_raw(backend: Backend, batch: list[_Loaded], resize: int | None) -> list[Prediction | Exception]:
    inputs = [resize_longest(normalize(x.gray), resize) for x in batch]
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


def _write(x: _Loaded, prediction: Prediction, seconds: float, options: SegmentOptions,
           namer: OutputNamer, model: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    height, width = x.gray.shape
    if prediction.mask.shape != (height, width):
        raise InternalError(f"{x.item.image}: model {model['model']} returned a "
                            f"{prediction.mask.shape} mask for a {(height, width)} image")
    stem = namer.stem(x.item.image)
    mask_path = inside(options.out, f"{stem}.mask.tif")
    write_binary_mask(mask_path, prediction.mask)
    prob_path = None
    if options.save_prob and prediction.score is not None:
        prob_path = inside(options.out, f"{stem}.prob.tif")
        write_score_map(prob_path, prediction.score)
    return new_record(
        KIND,
        image=x.item.image,
        image_sha256=x.sha256,
        page=options.page,
        width=width,
        height=height,
        mask=str(mask_path),
        prob=str(prob_path) if prob_path else None,
        confluence=confluence(prediction.mask),
        **prediction.extras,
        **model,
        seconds=round(seconds + time.perf_counter() - started, 4),
    )


def _failure(image: str, exc: Exception, model: dict[str, Any]) -> dict[str, Any]:
    if isinstance(exc, MonolayerError):
        return error_record(image, str(exc), exc.exit_code, model)
    return error_record(image, f"{image}: {type(exc).__name__}: {exc}", EXIT_INTERNAL, model)


def segment_items(items: Iterable[InputItem], backend: Backend,
                  options: SegmentOptions) -> Iterator[dict[str, Any]]:
    """Yield one record per input item, in input order; failures become error records.

    Images are read and predicted in batches of ``backend.batch_size``.
    """
    model = backend.describe()
    namer = OutputNamer()
    for chunk in _batched(items, backend.batch_size):
        results: list[dict[str, Any] | None] = [None] * len(chunk)
        ready: list[_Loaded] = []
        for i, item in enumerate(chunk):
            if item.error is not None:
                results[i] = error_record(item.image, item.error, item.exit_code, model)
                continue
            try:
                ready.append(_load(i, item, options.page))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                results[i] = _failure(item.image, exc, model)
        if ready:
            started = time.perf_counter()
            predictions = _predict(backend, ready, options.resize)
            share = (time.perf_counter() - started) / len(ready)
            for x, prediction in zip(ready, predictions):
                if isinstance(prediction, Exception):
                    results[x.index] = _failure(x.item.image, prediction, model)
                    continue
                try:
                    results[x.index] = _write(x, prediction, x.seconds + share, options, namer, model)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    results[x.index] = _failure(x.item.image, exc, model)
        yield from (record for record in results if record is not None)


def _batched(items: Iterable[InputItem], size: int) -> Iterator[tuple[InputItem, ...]]:
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
