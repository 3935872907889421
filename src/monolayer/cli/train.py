"""``monolayer train``: train a model on labelled images; a JSON Lines log on stdout, resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from monolayer.cli.common import HARDWARE, INPUT, MODEL, OUTPUT, cli_errors
from monolayer.cli.segment import Device, ModelName
from monolayer.errors import UnavailableError, UsageError
from monolayer.records import RecordWriter

TRAINABLE = ("unet",)


@cli_errors
def train(
    model: Annotated[ModelName, typer.Option("--model", "-m", help="Model to train (now: unet).",
                                             rich_help_panel=MODEL, show_default=False)],
    train_set: Annotated[Path, typer.Option("--train", help="Training images and masks: coco2mask "
                                            "JSON Lines.", rich_help_panel=INPUT, show_default=False)],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs to train in total.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write after every epoch "
                                      "(loadable by segment --weights); OUT.state holds what resuming "
                                      "needs.", rich_help_panel=OUTPUT, show_default=False)],
    val: Annotated[Path | None, typer.Option("--val", help="Validation images and masks (coco2mask "
                                             "JSON Lines): IoU and confluence error per epoch.",
                                             rich_help_panel=INPUT)] = None,
    resize: Annotated[int | None, typer.Option("--resize", min=16, help="Scale images so the longest "
                                               "side is this many px (give segment the same --resize).",
                                               rich_help_panel=INPUT)] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and "
                                          "90-degree rotations.")] = True,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.", rich_help_panel=MODEL)] = 1e-3,
    patch: Annotated[int, typer.Option("--patch", min=16, help="Random crop size in px.",
                                       rich_help_panel=MODEL)] = 256,
    crops_per_image: Annotated[int, typer.Option("--crops-per-image", min=1, help="Random crops per "
                                                 "image and epoch.", rich_help_panel=MODEL)] = 4,
    base_channels: Annotated[int, typer.Option("--base-channels", min=1, help="U-Net width: 64 is the "
                                               "paper's 64-1024 network.", rich_help_panel=MODEL)] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Crops per step.",
                                            rich_help_panel=HARDWARE)] = 4,
    device: Annotated[Device, typer.Option("--device", help="Where to train.",
                                           rich_help_panel=HARDWARE)] = Device.auto,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the paper: 100).")] = 100,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore OUT.state and start from epoch 1.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Train a model on labelled images; one JSON log record per epoch on stdout.

    The checkpoint is written after every epoch. Run the same command again after an
    interruption and training resumes after the last finished epoch; the log then
    repeats the finished epochs first, so '> log.jsonl' holds each epoch once.

    Example: monolayer train --model unet --train truth.jsonl --val val.jsonl --epochs 20 --resize 256 -o unet.pt > log.jsonl
    """
    if model.value not in TRAINABLE:
        raise UnavailableError(f"training --model {model.value} is not available yet in this version",
                               f"trainable now: {', '.join(TRAINABLE)}")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a checkpoint file name")
    from monolayer.training.data import load_pairs
    from monolayer.training.unet import UNetTrainOptions, train_unet

    options = UNetTrainOptions(epochs=epochs, seed=seed, device=device.value, batch_size=batch_size, lr=lr,
                               augment=augment, patch=patch, crops_per_image=crops_per_image,
                               base_channels=base_channels, resize=resize)
    train_pairs = load_pairs(train_set, resize)
    val_pairs = load_pairs(val, resize) if val else None
    writer = RecordWriter()

    def emit(record: dict) -> None:
        writer.write(record)
        if not quiet:
            extra = "".join(f", {k} {record[k]:.4f}" for k in ("val_iou", "val_abs_confluence_error") if k in record)
            print(f"monolayer: train: epoch {record['epoch']}/{record['epochs']}: loss {record['loss']:.4f}"
                  f"{extra}", file=sys.stderr, flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    train_unet(train_pairs, val_pairs, options, out, emit, restart=restart)
