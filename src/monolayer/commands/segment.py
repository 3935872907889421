"""``segment``: images -> binary masks (+ score maps) and one record per image."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolayer.backends import Backend
from monolayer.commands._naming import OutputNamer, inside
from monolayer.errors import EXIT_INTERNAL, InternalError, MonolayerError
from monolayer.io.images import load_image, normalize, to_grayscale
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


def error_record(image: str, message: str, exit_code: int, model: dict[str, Any]) -> dict[str, Any]:
    """The record of an image that could not be segmented."""
    return new_record(KIND, image=image, error=message, exit_code=exit_code,
                      model=model.get("model"), method=model.get("method"))


def segment_one(item: InputItem, backend: Backend, options: SegmentOptions,
                namer: OutputNamer, model: dict[str, Any]) -> dict[str, Any]:
    """Segment one image and write its outputs; raises MonolayerError on failure."""
    started = time.perf_counter()
    loaded = load_image(item.image, options.page)
    gray = to_grayscale(loaded.array)
    height, width = gray.shape
    prediction = backend.predict(normalize(gray))
    if prediction.mask.shape != (height, width):
        raise InternalError(f"{item.image}: model {model['model']} returned a "
                            f"{prediction.mask.shape} mask for a {(height, width)} image")
    stem = namer.stem(item.image)
    mask_path = inside(options.out, f"{stem}.mask.tif")
    write_binary_mask(mask_path, prediction.mask)
    prob_path = None
    if options.save_prob and prediction.score is not None:
        prob_path = inside(options.out, f"{stem}.prob.tif")
        write_score_map(prob_path, prediction.score)
    return new_record(
        KIND,
        image=item.image,
        image_sha256=loaded.sha256,
        page=options.page,
        width=width,
        height=height,
        mask=str(mask_path),
        prob=str(prob_path) if prob_path else None,
        confluence=confluence(prediction.mask),
        **prediction.extras,
        **model,
        seconds=round(time.perf_counter() - started, 4),
    )


def segment_items(items: Iterable[InputItem], backend: Backend,
                  options: SegmentOptions) -> Iterator[dict[str, Any]]:
    """Yield one record per input item, in input order; failures become error records."""
    model = backend.describe()
    namer = OutputNamer()
    for item in items:
        if item.error is not None:
            yield error_record(item.image, item.error, item.exit_code, model)
            continue
        try:
            yield segment_one(item, backend, options, namer, model)
        except MonolayerError as exc:
            yield error_record(item.image, str(exc), exc.exit_code, model)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one image breaking the model must not end the batch
            yield error_record(item.image, f"{item.image}: {type(exc).__name__}: {exc}",
                               EXIT_INTERNAL, model)
