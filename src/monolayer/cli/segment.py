"""``monolayer segment``: images to binary masks, score maps and confluence records."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import typer

from monolayer.backends import BACKENDS, create_backend
from monolayer.backends.classical import METHODS
from monolayer.cli.common import (
    INPUT, MODEL, OUTPUT, Tally, cli_errors, finish, progress, say_warning, write_records,
)
from monolayer.commands.segment import SegmentOptions, segment_items
from monolayer.errors import NoInputError, UsageError
from monolayer.io.inputs import expand_inputs

ModelName = enum.Enum("ModelName", {name: name for name in BACKENDS}, type=str)
Method = enum.Enum("Method", {name: name for name in METHODS}, type=str)


@cli_errors
def segment(
    inputs: Annotated[list[str], typer.Argument(
        help="Images, folders, quoted glob patterns, or - for JSON Lines (an 'image' field "
        "per record) or plain paths on stdin.", show_default=False, metavar="INPUT...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks (created if needed).",
                                      rich_help_panel=OUTPUT, show_default=False)],
    model: Annotated[ModelName, typer.Option(
        "--model", "-m", help="Segmentation backend.", rich_help_panel=MODEL)] = ModelName.classical,
    method: Annotated[Method, typer.Option(
        "--method", help="Method of the classical model: phase (local-contrast thresholding for "
        "phase contrast) or canny (the paper's baseline).", rich_help_panel=MODEL)] = Method.phase,
    save_prob: Annotated[bool, typer.Option(
        "--save-prob", help="Also write the float32 probability/score map, STEM.prob.tif.",
        rich_help_panel=OUTPUT)] = False,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs to read.",
                                      rich_help_panel=INPUT)] = 0,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look for images in "
                                            "sub-folders of folder inputs.", rich_help_panel=INPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Segment images and report their confluence.

    Writes OUT/STEM.mask.tif (uint8 0/1) per image and prints one JSON record per
    image: image, image_sha256, mask, confluence (foreground / original image
    area), model, method, params, seconds. An image that cannot be read gives an
    error record and a line on stderr; the others are still processed, and the
    exit code is 1 at the end.

    Example: monolayer segment images/ --out pred/ > pred.jsonl
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if model.value != "classical" and method != Method.phase:
        raise UsageError("--method applies to --model classical only")
    started = time.perf_counter()
    items = list(expand_inputs(inputs, recursive=recursive, exclude=out))
    if not items:
        raise NoInputError("no input images", "name image files or folders, or - for stdin")
    options = {"method": method.value} if model.value == "classical" else {}
    backend = create_backend(model.value, **options)
    if save_prob and backend.score_kind is None:
        say_warning("--save-prob: this method produces no score map; only masks are written")
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    with progress(len(items), "segment", quiet) as bar:
        task = bar.add_task("segment", total=len(items))
        records = segment_items(items, backend, SegmentOptions(out=out, save_prob=save_prob, page=page))
        for _ in write_records(records, tally):
            bar.advance(task)
    finish(tally, "segment", quiet, time.perf_counter() - started)
