"""``monolayer train``: train a model on labelled images; a JSON Lines log on stdout, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monolayer.cli.common import HARDWARE, INPUT, MODEL, OUTPUT, cli_errors, progress
from monolayer.cli.segment import Device, ModelName
from monolayer.errors import UsageError
from monolayer.io.atomic import ensure_folder, present
from monolayer.records import RecordWriter

TRAINERS = {
    "unet": "monolayer.training.unet:train_unet",
    "sam": "monolayer.training.sam:train_sam",
    "cellpose": "monolayer.training.cellpose:train_cellpose",
    "maskrcnn": "monolayer.training.maskrcnn:train_maskrcnn",
}
# Which models take which option: anything else is a usage error, never silently ignored.
OWNERS = {"patch": ("unet", "cellpose"), "crops_per_image": ("unet",), "base_channels": ("unet",),
          "weights": ("sam", "cellpose", "maskrcnn")}


@cli_errors
def train(
    model: Annotated[ModelName, typer.Option("--model", "-m", help="unet (from scratch), sam (mask "
                                             "decoder of --weights), cellpose or maskrcnn (from --weights, "
                                             "else random initialisation).",
                                             rich_help_panel=MODEL, show_default=False)],
    train_set: Annotated[Path, typer.Option("--train", help="Training images and masks: coco2mask "
                                            "JSON Lines, or a folder with images/ and masks/.",
                                            rich_help_panel=INPUT, show_default=False)],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs to train in total.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write after every epoch "
                                      "(loadable by segment --weights); OUT.state holds what resuming "
                                      "needs.", rich_help_panel=OUTPUT, show_default=False)],
    val: Annotated[Path | None, typer.Option("--val", help="Validation images and masks (as "
                                             "--train): IoU and confluence error per epoch.",
                                             rich_help_panel=INPUT)] = None,
    resize: Annotated[int | None, typer.Option("--resize", min=16, help="Scale images so the longest "
                                               "side is this many px (give segment the same --resize).",
                                               rich_help_panel=INPUT)] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and "
                                          "90-degree rotations (cellpose: its own rotation, flip and "
                                          "scale augmentation).")] = True,
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="Checkpoint to start from (file, "
                                                "or a published name in the cache): required for sam, "
                                                "optional for cellpose and maskrcnn.", rich_help_panel=MODEL,
                                                show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate [default: unet 1e-3 "
                                             "(Adam), sam 1e-4 (Adam), cellpose 0.005 (AdamW), maskrcnn "
                                             "0.00025 (SGD, the paper's)].", rich_help_panel=MODEL,
                                             show_default=False)] = None,
    patch: Annotated[int | None, typer.Option("--patch", min=16, help="unet, cellpose: random crop size "
                                              "in px [default: 256, cellpose 224].", rich_help_panel=MODEL,
                                              show_default=False)] = None,
    crops_per_image: Annotated[int | None, typer.Option("--crops-per-image", min=1, help="unet: random "
                                                        "crops per image and epoch [default: 4].",
                                                        rich_help_panel=MODEL, show_default=False)] = None,
    base_channels: Annotated[int | None, typer.Option("--base-channels", min=1, help="unet: width; 64 "
                                                      "is the paper's 64-1024 network [default: 64].",
                                                      rich_help_panel=MODEL, show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Samples per step "
                                                   "[default: unet 4 crops, sam 1, cellpose 8, maskrcnn 2 "
                                                   "images].", rich_help_panel=HARDWARE,
                                                   show_default=False)] = None,
    device: Annotated[Device, typer.Option("--device", help="Where to train.",
                                           rich_help_panel=HARDWARE)] = Device.auto,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the paper: 100).")] = 100,
    restart: Annotated[bool, typer.Option("--restart", "--overwrite", help="Start from epoch 1, replacing "
                                          "OUT and OUT.state (without it an existing OUT is resumed if "
                                          "OUT.state matches these options, else refused).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Train a model on labelled images; one JSON log record per epoch on stdout.

    The checkpoint is written after every epoch. Run the same command again after an
    interruption and training resumes after the last finished epoch; the log then
    repeats the finished epochs first, so '> log.jsonl' holds each epoch once.

    What is trained: unet from scratch (BCE + Dice, Adam); sam's mask decoder only,
    image and prompt encoders frozen (focal + dice 20:1, Adam); cellpose with
    cellpose's own flows, augmentation and loss; maskrcnn with the paper's base
    learning rate and 128 ROI samples per image. Each checkpoint loads with
    'segment --model MODEL --weights OUT'.

    Example: monolayer train --model unet --train truth.jsonl --val val.jsonl --epochs 20 --resize 256 -o unet.pt > log.jsonl
    """
    if model.value not in TRAINERS:
        raise UsageError(f"--model {model.value} has no weights to train",
                         f"trainable: {', '.join(TRAINERS)}")
    if present(out) and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a checkpoint file name")
    from monolayer.training.loop import state_path

    if present(out) and not state_path(out).exists() and not restart:
        # Only a checkpoint this training configuration is writing may be replaced silently.
        raise UsageError(f"{out} exists and is not a checkpoint of an unfinished run of this training "
                         f"(no {state_path(out).name} beside it)",
                         "choose another -o, or --overwrite to replace it")
    if lr is not None and not lr > 0:
        raise UsageError(f"--lr must be positive, not {lr}")
    given = {"patch": patch, "crops_per_image": crops_per_image, "base_channels": base_channels,
             "weights": weights}
    for option, value in given.items():
        if value is not None and model.value not in OWNERS[option]:
            raise UsageError(f"--{option.replace('_', '-')} does not apply to training --model {model.value}",
                             f"it applies to: {', '.join(OWNERS[option])}")
    if model.value == "sam" and weights is None:
        raise UsageError("training --model sam fine-tunes a checkpoint: give --weights",
                         "e.g. --weights sam_vit_b after 'monolayer models fetch sam_vit_b'")
    import importlib

    from monolayer.backends import BACKENDS
    from monolayer.training.common import TrainOptions
    from monolayer.training.data import load_pairs

    BACKENDS[model.value].require(f"training {model.value}")
    given_sizes = {k: v for k, v in {"crops_per_image": crops_per_image, "base_channels": base_channels}.items()
             if v is not None}  # else TrainOptions' defaults
    options = TrainOptions(epochs=epochs, seed=seed, device=device.value, batch_size=batch_size, lr=lr,
                           augment=augment, patch=patch, resize=resize, weights=weights, **given_sizes)
    module_name, function_name = TRAINERS[model.value].split(":")
    trainer = getattr(importlib.import_module(module_name), function_name)
    train_pairs = load_pairs(train_set, resize)
    val_pairs = load_pairs(val, resize) if val else None
    writer = RecordWriter()
    ensure_folder(out.parent, file_name=out.name)
    with progress(epochs, "train", quiet) as bar:
        task = bar.add_task(f"train {model.value}", total=epochs)

        def emit(record: dict) -> None:
            writer.write(record)
            bar.update(task, completed=record["epoch"])
            if not quiet:
                extra = "".join(f", {k} {record[k]:.4f}" for k in ("val_iou", "val_abs_confluence_error")
                                if k in record)
                bar.console.print(f"monolayer: train: epoch {record['epoch']}/{record['epochs']}: "
                                  f"loss {record['loss']:.4f}{extra}", highlight=False, markup=False)

        trainer(train_pairs, val_pairs, options, out, emit, restart=restart)
