"""``monolayer train``: train a model on labelled images; a JSON Lines log on stdout, resumable."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS
from monolayer.cli.backend_options import given, refuse_foreign, with_backend_options
from monolayer.cli.common import HARDWARE, INPUT, MODEL, OUTPUT, cli_errors, progress
from monolayer.devices import DEVICES
from monolayer.errors import UsageError
from monolayer.io.atomic import ensure_folder, present
from monolayer.records import RecordWriter

TRAINABLE = [name for name, spec in BACKENDS.items() if spec.trainer]
ModelName = enum.Enum("ModelName", {name: name for name in TRAINABLE}, type=str)
Device = enum.Enum("Device", {name: name for name in DEVICES}, type=str)


def _defaults(name: str) -> str:
    """``sam 0.0001, cellpose 0.005, ...`` (for ``[default: ...]``) from the backends' declarations."""
    return ", ".join(f"{n} {BACKENDS[n].defaults[name]}" for n in TRAINABLE if name in BACKENDS[n].defaults)


@cli_errors
@with_backend_options("train")
def train(
    model: Annotated[ModelName, typer.Option("--model", "-m", help="The model to train: "
                                             + ", ".join(TRAINABLE) + ".",
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
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.", rich_help_panel=MODEL,
                                             show_default=_defaults("lr"))] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Samples per step.",
                                                   rich_help_panel=HARDWARE,
                                                   show_default=_defaults("batch_size"))] = None,
    device: Annotated[Device, typer.Option("--device", help="Where to train.",
                                           rich_help_panel=HARDWARE)] = Device.auto,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the paper: 100).")] = 100,
    restart: Annotated[bool, typer.Option("--restart", "--overwrite", help="Start from epoch 1, replacing "
                                          "OUT and OUT.state (without it an existing OUT is resumed if "
                                          "OUT.state matches these options, else refused).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    **backend_options: Any,
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
    spec = BACKENDS[model.value]
    state = out.with_name(out.name + ".state")  # training.loop.state_path (which imports torch)
    if present(out) and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a checkpoint file name")
    if present(out) and not state.exists() and not restart:
        # Only a checkpoint this training configuration is writing may be replaced silently.
        raise UsageError(f"{out} exists and is not a checkpoint of an unfinished run of this training "
                         f"(no {state.name} beside it)",
                         "choose another -o, or --overwrite to replace it")
    if lr is not None and not lr > 0:
        raise UsageError(f"--lr must be positive, not {lr}")
    options = given(backend_options)
    refuse_foreign(spec, options, "train")
    if spec.train_requires_weights and "weights" not in options:
        raise UsageError(f"training --model {model.value} fine-tunes a checkpoint: give --weights",
                         "see 'monolayer models' for published checkpoints")
    spec.require(f"training {model.value}")  # before anything imports torch: exit 69, not 70
    import importlib

    from monolayer.training.common import TrainOptions
    from monolayer.training.data import fingerprint, load_pairs

    sizes = {k: options[k] for k in ("crops_per_image", "base_channels") if k in options}
    train_options = TrainOptions(epochs=epochs, seed=seed, device=device.value, batch_size=batch_size, lr=lr,
                                 augment=augment, patch=options.get("patch"), resize=resize,
                                 weights=options.get("weights"), **sizes)
    module_name, function_name = spec.trainer.split(":")
    trainer = getattr(importlib.import_module(module_name), function_name)
    # The model learns from the input its segment pass will give it (the backend's own
    # preprocessing), and the sidecar tells segment so.
    train_pairs = load_pairs(train_set, resize, preprocess=spec.preprocess)
    val_pairs = load_pairs(val, resize, preprocess=spec.preprocess) if val else None
    writer = RecordWriter()
    ensure_folder(out.parent, file_name=out.name)
    contract = {"model": model.value, "normalize": spec.preprocess, "resize": resize,
                "params": {o.name: o.default for o in spec.segment_options if o.sidecar and o.default is not None},
                "architecture": {k: v for k, v in sizes.items()} | ({"base": "random"} if not options.get("weights")
                                                                   else {"base_weights": str(options["weights"])}),
                "training_set": fingerprint(train_pairs)}
    with progress(epochs, "train", quiet) as bar:
        task = bar.add_task(f"train {model.value}", total=epochs)

        def emit(record: dict) -> None:
            write_contract(out, contract)
            writer.write(record)
            bar.update(task, completed=record["epoch"])
            if not quiet:
                extra = "".join(f", {k} {record[k]:.4f}" for k in ("val_iou", "val_abs_confluence_error")
                                if k in record)
                bar.console.print(f"monolayer: train: epoch {record['epoch']}/{record['epochs']}: "
                                  f"loss {record['loss']:.4f}{extra}", highlight=False, markup=False)

        trainer(train_pairs, val_pairs, train_options, out, emit, restart=restart)


def write_contract(out: Path, contract: dict[str, Any]) -> None:
    """The checkpoint's sidecar, for the checkpoint as it is on disk now (written after
    every epoch, so it always describes the weights beside it)."""
    from monolayer.io.images import sha256_file
    from monolayer.sidecar import write_sidecar

    write_sidecar(out, weights_sha256=sha256_file(out), **contract)
