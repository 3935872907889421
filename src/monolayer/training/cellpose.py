"""Training Cellpose 3 (CPnet) with cellpose's own flows, augmentation and loss.

The pieces are cellpose 3.1's: ``dynamics.labels_to_flows`` turns instance labels
into the flow targets, ``transforms.random_rotate_and_resize`` augments (random
rotation, flip and scale around the cell-diameter rescaling, flows rotated with the
image), and ``train._loss_fn_seg`` is the loss (MSE on the flows + BCE on the cell
probability). What monolayer adds is the epoch loop of ``run_epochs``: a checkpoint
after every epoch, resumable, and the JSON Lines log. Differences from
``cellpose.train.train_seg``, by design:

* the learning rate warms up linearly over the first 10 epochs from lr/10 (cellpose
  starts at 0, which wastes the first epoch of a short run) and then stays constant
  (cellpose's final decay depends on the total epoch count, which would make a
  resumed run with more epochs differ from a run planned that long);
* ``--no-augment`` turns off rotation, flips and random scaling (crops stay random).

As in cellpose, images with fewer than :data:`MIN_TRAIN_MASKS` labelled cells are
left out, the network's ``diam_labels`` is set to the mean diameter of the training
labels (so ``segment --model cellpose`` rescales new images the same way), and the
optimiser is AdamW (lr 0.005, weight decay 1e-5). Without ``--weights`` the network
starts from random initialisation; with it, from that cellpose 3 checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from monolayer.backends.cellpose.model import load_weights, new_model, run_eval, sync_diameters
from monolayer.devices import resolve_device
from monolayer.errors import DataError
from monolayer.training.common import TrainOptions, step, validation_metrics
from monolayer.training.data import Pair, fingerprint
from monolayer.training.loop import run_epochs
from monolayer.weights import resolve

DEFAULT_LR = 0.005
DEFAULT_BATCH = 8
DEFAULT_PATCH = 224
WEIGHT_DECAY = 1e-5
WARMUP_EPOCHS = 10
MIN_TRAIN_MASKS = 5
MIN_DIAMETER = 5.0


def _prepare(pairs: list[Pair], device: torch.device) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Cellpose-normalised 2-channel images, flow targets and diameters of the usable pairs.

    The pairs hold the raw intensities (``load_pairs(..., preprocess="none")``), which
    ``_reshape_norm`` takes through ``convert_image`` and ``normalize_img`` with its
    defaults (1st..99th percentile), as ``CellposeModel.eval`` does and so ``segment``.
    """
    from cellpose import dynamics, models, train, utils

    images = train._reshape_norm([p.image for p in pairs], channels=[0, 0],
                                 normalize_params={**models.normalize_default, "normalize": True})
    with contextlib.redirect_stderr(io.StringIO()):  # cellpose's own progress bar
        flows = dynamics.labels_to_flows([p.labels for p in pairs], device=device)
    diameters = np.array([utils.diameters(p.labels)[0] for p in pairs], dtype=np.float64)
    return images, flows, np.maximum(diameters, MIN_DIAMETER)


def train_cellpose(train: list[Pair], val: list[Pair] | None, options: TrainOptions, out: Path,
                   emit: Callable[[dict[str, Any]], None], restart: bool = False) -> None:
    """Train (or resume training) a cellpose 3 network and write ``out`` after every epoch."""
    from cellpose import train as cp_train
    from cellpose import transforms

    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    usable = [p for p in train if len(np.unique(p.labels[p.labels > 0])) >= MIN_TRAIN_MASKS]
    if len(usable) < len(train):
        print(f"monolayer: warning: train: {len(train) - len(usable)} image(s) with fewer than "
              f"{MIN_TRAIN_MASKS} labelled cells left out, as cellpose does", file=sys.stderr, flush=True)
    if not usable:
        raise DataError(f"no training image has {MIN_TRAIN_MASKS} or more labelled cells",
                        "cellpose learns from instance masks: give label images, not empty masks")
    model = new_model(device)
    base = resolve(options.weights, "cellpose") if options.weights else None
    if base is not None:
        load_weights(model, base.path)
    net = model.net
    images, flows, diameters = _prepare(usable, device)
    net.diam_labels.data = torch.tensor([float(diameters.mean())], device=device)
    sync_diameters(model, "training labels")
    lr = options.lr or DEFAULT_LR
    batch_size = options.batch_size or DEFAULT_BATCH
    patch = options.patch or DEFAULT_PATCH
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    config = {"model": "cellpose", "base_weights": base.sha256 if base else None, "seed": options.seed,
              "batch_size": batch_size, "lr": lr, "patch": patch, "augment": options.augment,
              "resize": options.resize, "train": fingerprint(usable), "val": fingerprint(val) if val else None}

    def train_epoch() -> float:
        # cellpose's augmentation draws from numpy's global generator: seed it from ours,
        # whose state the checkpoint keeps, so a resumed run draws the same crops.
        np.random.seed(int(rng.integers(2**31)))
        losses = []
        order = rng.permutation(len(usable))
        for start in range(0, len(order), batch_size):
            inds = order[start:start + batch_size]
            rescale = diameters[inds] / net.diam_mean.item()
            imgi, lbl = transforms.random_rotate_and_resize(
                [images[i] for i in inds], Y=[flows[i][1:] for i in inds], rescale=rescale,
                scale_range=0.5 if options.augment else 0.0, xy=(patch, patch),
                do_flip=options.augment, rotate=options.augment)[:2]
            y = net(torch.from_numpy(imgi).to(device))[0]
            loss = cp_train._loss_fn_seg(lbl, y, device)
            losses.append(step(optimizer, loss))
        return float(np.mean(losses))

    def validate() -> dict[str, float]:
        def predict(pair: Pair) -> np.ndarray:
            labels, _flows = run_eval(model, pair.image, diameter=model.diam_labels)
            return np.asarray(labels).reshape(pair.image.shape) > 0
        return validation_metrics(val or [], predict)

    run_epochs(model=net, optimizer=optimizer, config=config, epochs=options.epochs, out=out, rng=rng,
               train_epoch=train_epoch, validate=validate if val else None, emit=emit, restart=restart,
               before_epoch=lambda e: _set_lr(optimizer, lr, e))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int) -> None:
    """Linear warm-up from lr/10 over the first epochs, then constant."""
    for group in optimizer.param_groups:
        group["lr"] = lr * min(1.0, epoch / WARMUP_EPOCHS)
