"""``monolayer coco2mask``: COCO annotations to instance-label masks and truth records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from monolayer.cli.common import (
    INPUT, OUTPUT, Tally, cli_errors, finish, progress, say_warning, write_records,
)
from monolayer.coco import load_coco
from monolayer.commands.coco2mask import Coco2MaskOptions, coco_to_masks, planned_stems
from monolayer.errors import UsageError
from monolayer.io.images import sha256_file
from monolayer.io.atomic import ensure_folder, present
from monolayer.io.journal import output_lock
from monolayer.io.provenance import OutputList, claim_folder


@cli_errors
def coco2mask(
    annotations: Annotated[Path, typer.Argument(help="COCO instances JSON file.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the masks (created if needed).",
                                      rich_help_panel=OUTPUT, show_default=False)],
    images: Annotated[Path | None, typer.Option(
        "--images", "-i", help="Folder of the images. Each record then names the image file, "
        "its SHA-256 (so evaluate can match by content) and its size is checked against the COCO file.",
        rich_help_panel=INPUT)] = None,
    lazy: Annotated[bool, typer.Option(
        "--lazy", help="Goal-dependent labels: merge touching or overlapping cells into one "
        "object per cluster. The foreground (and confluence) is unchanged.",
        rich_help_panel=OUTPUT)] = False,
    binary: Annotated[bool, typer.Option(
        "--binary", help="Also write a 0/1 foreground mask, STEM.binary.tif.",
        rich_help_panel=OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="OUT holds another conversion's masks (other annotations, --lazy or "
        "--binary): delete them first, instead of refusing.", rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Convert COCO annotations to one uint16 instance-label TIFF per image.

    Writes OUT/STEM.labels.tif (0 = background, 1..N = cells) and prints one JSON
    record per image: image, mask, width, height, instances, confluence (union of
    all instances / image area). Polygons, RLE and iscrowd regions are handled;
    where instances overlap, the smaller one keeps the pixels. A broken annotation
    gives an error record for its image and exit code 1 at the end; the other
    images are still converted. File names in the COCO file never place a mask
    outside OUT.

    Example: monolayer coco2mask annotations.json --images images/ --out truth/ > truth.jsonl
    """
    if images is not None and not images.is_dir():
        raise UsageError(f"--images {images} is not a folder")
    if present(out) and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    started = time.perf_counter()
    coco = load_coco(annotations)
    for warning in coco.warnings:
        say_warning(warning)
    ensure_folder(out)
    options = Coco2MaskOptions(out=out, images=images, lazy=lazy, binary=binary)
    tally = Tally()
    fingerprint = {"annotations_sha256": sha256_file(annotations), "lazy": lazy, "binary": binary,
                   "images": str(images.resolve()) if images is not None else None}
    with output_lock(out):
        removed = claim_folder(out, "coco2mask", fingerprint, overwrite=overwrite)
        if removed and not quiet:
            say_warning(f"--overwrite: deleted {removed} file(s) of the previous run in {out}")
        with progress(len(coco.images), "coco2mask", quiet) as bar:
            task = bar.add_task("coco2mask", total=len(coco.images))
            # Every name this run may write is listed before any is written (for --overwrite).
            OutputList(out).add(name for stem in planned_stems(coco)
                                for name in (f"{stem}.labels.tif", f"{stem}.binary.tif" if binary else ""))
            records = coco_to_masks(coco, options)
            for _ in write_records(records, tally):
                bar.advance(task)
    finish(tally, "coco2mask", quiet, time.perf_counter() - started)
