"""``monolayer segment``: images to binary masks, score maps and confluence records."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS, create_backend
from monolayer.backends.classical import METHODS
from monolayer.cli.common import (
    HARDWARE, INPUT, MODEL, OUTPUT, Tally, cli_errors, finish, progress, say_warning, write_records,
)
from monolayer.commands.segment import SegmentOptions, segment_items
from monolayer.devices import DEVICES, PRECISIONS
from monolayer.errors import NoInputError, UsageError
from monolayer.io.inputs import expand_inputs

ModelName = enum.Enum("ModelName", {name: name for name in BACKENDS}, type=str)
Method = enum.Enum("Method", {name: name for name in METHODS}, type=str)
Mode = enum.Enum("Mode", {name: name for name in ("promptless", "auto")}, type=str)
Device = enum.Enum("Device", {name: name for name in DEVICES}, type=str)
Precision = enum.Enum("Precision", {name: name for name in PRECISIONS}, type=str)

# Which models take which option: anything else is a usage error, never silently ignored.
OWNERS = {
    "method": ("classical",), "mode": ("sam",), "tile": ("sam",), "points_per_side": ("sam",),
    "diameter": ("cellpose",), "truth": ("cellpose",), "flow_threshold": ("cellpose",),
    "cellprob_threshold": ("cellpose",), "thresholds_file": ("cellpose",),
    "score_threshold": ("maskrcnn",), "threshold": ("sam", "unet", "maskrcnn"),
    "weights": ("sam", "cellpose", "maskrcnn", "unet"), "device": ("sam", "cellpose", "maskrcnn", "unet"),
    "precision": ("sam", "cellpose", "maskrcnn", "unet"), "seed": ("sam", "cellpose", "maskrcnn", "unet"),
    "batch_size": ("sam", "cellpose", "maskrcnn", "unet"),
}
RUNTIME = ("weights", "device", "precision", "seed", "batch_size")


def backend_options(model: str, given: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the backend from the options the user actually gave."""
    given = {k: v for k, v in given.items() if v is not None}
    for option, value in given.items():
        if model not in OWNERS[option]:
            flag = "--" + ("thresholds" if option == "thresholds_file" else option.replace("_", "-"))
            raise UsageError(f"{flag} does not apply to --model {model}",
                             f"it applies to: {', '.join(OWNERS[option])}")
    if model == "classical":
        return given
    from monolayer.backends._torch import RuntimeOptions

    runtime = RuntimeOptions(**{k: given.pop(k) for k in RUNTIME if k in given})
    if "diameter" in given:
        given["diameter"] = _diameter(given.pop("diameter"), given.pop("truth", None))
    elif "truth" in given:
        raise UsageError("--truth goes with --diameter auto")
    return {"runtime": runtime, **given}


def _diameter(value: str, truth: list[Path] | None) -> float:
    if value == "auto":
        if not truth:
            raise UsageError("--diameter auto needs --truth (labelled masks to measure)")
        from monolayer.commands.segment import diameter_from_truth

        return diameter_from_truth(truth)
    try:
        diameter = float(value)
    except ValueError:
        raise UsageError(f"--diameter {value!r}: give pixels or 'auto'") from None
    if diameter <= 0:
        raise UsageError("--diameter must be positive")
    return diameter


@cli_errors
def segment(
    inputs: Annotated[list[str], typer.Argument(
        help="Images, folders, quoted glob patterns, or - for JSON Lines (an 'image' field "
        "per record) or plain paths on stdin.", show_default=False, metavar="INPUT...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks (created if needed).",
                                      rich_help_panel=OUTPUT, show_default=False)],
    model: Annotated[ModelName, typer.Option(
        "--model", "-m", help="Segmentation backend ('monolayer models' lists them).",
        rich_help_panel=MODEL)] = ModelName.classical,
    method: Annotated[Method | None, typer.Option(
        "--method", help="classical: phase (local-contrast thresholding for phase contrast, the "
        "default) or canny (the paper's baseline).", rich_help_panel=MODEL, show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help="Checkpoint file, or the name of a published checkpoint already "
        "fetched into the cache (see 'monolayer models').", rich_help_panel=MODEL,
        show_default=False)] = None,
    mode: Annotated[Mode | None, typer.Option(
        "--mode", help="sam: promptless (the paper: no prompts, one mask; default) or auto "
        "(automatic mask generator, background masks rejected).", rich_help_panel=MODEL,
        show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="sam, unet, maskrcnn: absolute probability threshold for the mask "
        "[default: 0.5].", rich_help_panel=MODEL, show_default=False)] = None,
    tile: Annotated[int | None, typer.Option(
        "--tile", help="sam: process images larger than this many pixels in overlapping tiles.",
        rich_help_panel=MODEL, show_default=False)] = None,
    points_per_side: Annotated[int | None, typer.Option(
        "--points-per-side", help="sam --mode auto: grid of point prompts per side [default: 32].",
        rich_help_panel=MODEL, show_default=False)] = None,
    diameter: Annotated[str | None, typer.Option(
        "--diameter", help="cellpose: mean cell diameter in pixels, or 'auto' to measure it on "
        "the labelled masks given with --truth.", rich_help_panel=MODEL, show_default=False)] = None,
    truth: Annotated[list[Path] | None, typer.Option(
        "--truth", help="cellpose --diameter auto: labelled instance masks (coco2mask JSON Lines "
        "or a mask folder).", rich_help_panel=MODEL, show_default=False)] = None,
    flow_threshold: Annotated[float | None, typer.Option(
        "--flow-threshold", help="cellpose: flow error threshold [default: 0.4].",
        rich_help_panel=MODEL, show_default=False)] = None,
    cellprob_threshold: Annotated[float | None, typer.Option(
        "--cellprob-threshold", help="cellpose: cell probability threshold, in logits [default: 0].",
        rich_help_panel=MODEL, show_default=False)] = None,
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="cellpose: JSON file of tuned thresholds, as written by "
        "'monolayer cellpose-thresholds'.", rich_help_panel=MODEL, show_default=False)] = None,
    score_threshold: Annotated[float | None, typer.Option(
        "--score-threshold", help="maskrcnn: keep instances with at least this confidence "
        "[default: 0.5].", rich_help_panel=MODEL, show_default=False)] = None,
    device: Annotated[Device | None, typer.Option(
        "--device", help="Learned models: where to run; an unavailable device is an error "
        "[default: auto].", rich_help_panel=HARDWARE, show_default=False)] = None,
    precision: Annotated[Precision | None, typer.Option(
        "--precision", help="Learned models: fp32, or bf16 for the heavy encoders where the "
        "hardware supports it [default: fp32].", rich_help_panel=HARDWARE, show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Learned models: images per forward pass [default: 1].",
        rich_help_panel=HARDWARE, show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Learned models: random seed [default: 0].", rich_help_panel=HARDWARE,
        show_default=False)] = None,
    save_prob: Annotated[bool, typer.Option(
        "--save-prob", help="Also write the float32 probability/score map, STEM.prob.tif.",
        rich_help_panel=OUTPUT)] = False,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs to read.",
                                      rich_help_panel=INPUT)] = 0,
    resize: Annotated[int | None, typer.Option(
        "--resize", min=16, help="Give the model images scaled so the longest side is this many "
        "pixels (use the value the model was trained with); masks are scaled back, so confluence "
        "is still over the original image.", rich_help_panel=INPUT, show_default=False)] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look for images in "
                                            "sub-folders of folder inputs.", rich_help_panel=INPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Segment images and report their confluence.

    Writes OUT/STEM.mask.tif (uint8 0/1) per image and prints one JSON record per
    image: image, image_sha256, mask, confluence (foreground / original image
    area), model, method, params, weights_sha256, seconds. The model is loaded
    once per run. An image that cannot be read gives an error record and a line
    on stderr; the others are still processed, and the exit code is 1 at the end.

    Example: monolayer segment images/ --model sam --weights sam_vit_b --out pred/ > pred.jsonl
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    given = {"method": method, "weights": weights, "mode": mode, "threshold": threshold, "tile": tile,
             "points_per_side": points_per_side, "diameter": diameter, "truth": truth,
             "flow_threshold": flow_threshold, "cellprob_threshold": cellprob_threshold,
             "thresholds_file": thresholds_file, "score_threshold": score_threshold,
             "device": device, "precision": precision, "batch_size": batch_size, "seed": seed}
    given = {k: v.value if isinstance(v, enum.Enum) else v for k, v in given.items()}
    options = backend_options(model.value, given)
    started = time.perf_counter()
    items = list(expand_inputs(inputs, recursive=recursive, exclude=out))
    if not items:
        raise NoInputError("no input images", "name image files or folders, or - for stdin")
    backend = create_backend(model.value, **options)
    if save_prob and backend.score_kind is None:
        say_warning("--save-prob: this method produces no score map; only masks are written")
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    with progress(len(items), "segment", quiet) as bar:
        task = bar.add_task("segment", total=len(items))
        records = segment_items(items, backend, SegmentOptions(out=out, save_prob=save_prob, page=page, resize=resize))
        for _ in write_records(records, tally):
            bar.advance(task)
    finish(tally, "segment", quiet, time.perf_counter() - started)
