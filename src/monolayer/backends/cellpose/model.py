"""Cellpose 3 backend: cellpose's own network and mask reconstruction, loaded safely, never downloading.

The network is cellpose 3.1's ``CPnet`` (the "cyto"/"cyto3" architecture: channels
2-32-64-128-256, 3 outputs, 3x3 kernels, about 6.6 M parameters) inside a
``cellpose.models.CellposeModel`` built with ``pretrained_model=False`` and no
``model_type``, so cellpose never looks up, downloads or substitutes a model. The
weights come from ``--weights FILE`` (a cellpose 3 checkpoint such as ``cyto3`` or a
file saved by cellpose training) through :func:`monolayer.weights.load_state_dict`
(``torch.load(weights_only=True)``): a checkpoint that would run code is refused.

Why cellpose 3 and not 4: 3.1's CPnet has 6.6 M parameters and segments an image in
about a second on a CPU; cellpose 4's CPSAM is a ViT-L (about 300 M parameters) at
20-60 s per image on a CPU.

Prediction runs ``CellposeModel.eval`` on the grayscale image's raw intensities
(channels ``[0, 0]``, cellpose's own 1st-99th percentile normalisation, which is what
its checkpoints were trained with; ``monolayer.io.images.preprocess`` mode ``"none"``).
The mask is the union of the instances; the score is the cell probability
``sigmoid(cellprob logits)`` at the image's size.

Diameter
    ``diameter=None`` uses the checkpoint's stored ``diam_labels`` (the mean cell
    diameter of its training labels; 30 px for cyto/cyto3 and for checkpoints that
    store none), i.e. the image is rescaled by ``diam_mean / diam_labels``, exactly as
    ``CellposeModel.eval(diameter=None)``. A number rescales by ``diam_mean / diameter``.
    :func:`monolayer.metrics.mean_diameter` gives the paper's "mean cell diameter computed from the
    labelled data".

Thresholds
    ``flow_threshold`` and ``cellprob_threshold`` as given; which of a flag, a
    ``--thresholds`` file, the checkpoint's sidecar or the default supplied them is
    decided by the CLI (see :mod:`monolayer.backends._spec`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from monolayer.backends._base import Prediction
from monolayer.backends._torch import RuntimeOptions, TorchBackend
from monolayer.errors import DataError, UsageError
from monolayer.weights import load_state_dict

DEFAULT_FLOW_THRESHOLD = 0.4
DEFAULT_CELLPROB_THRESHOLD = 0.0
DEFAULT_DIAMETER = 30.0
"""cellpose's ``diam_mean`` for cyto/cyto3, used when a checkpoint stores none."""

NBASE = [32, 64, 128, 256]
NCLASSES = 3
MIN_SIZE = 15
"""Instances smaller than this (pixels) are dropped: cellpose's ``eval`` default."""
MAX_SIZE_FRACTION = 0.4
"""Instances larger than this fraction of the image are dropped: cellpose's default."""

_OPTIONAL_KEYS = {"diam_mean", "diam_labels"}


@dataclass
class FlowOutputs:
    """The network's output for one image at the image's size: what mask reconstruction needs."""

    dP: np.ndarray
    """Flows, shape (2, H, W), as cellpose predicts them (5x the unit flow)."""
    cellprob: np.ndarray
    """Cell probability logits, shape (H, W)."""
    niter: int
    """Euler steps for following the flows (cellpose: 200 / rescale when resampling)."""


def _check_state_dict(state: dict[str, Any], expected: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a checkpoint that is not a cellpose 3 CPnet with 3 outputs, naming why."""
    if "W2" in state:
        raise DataError(f"{path}: this is a cellpose 4 (CPSAM) checkpoint, not cellpose 3",
                        "give a cellpose 3 checkpoint such as cyto3, or one trained with cellpose 3")
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state) - _OPTIONAL_KEYS)
    if unexpected or missing:
        what = (f"unexpected key {unexpected[0]!r}" if unexpected else f"missing key {missing[0]!r}")
        raise DataError(f"{path}: not a cellpose 3 network checkpoint ({what}; "
                        f"{len(unexpected)} unexpected, {len(missing)} missing)",
                        "give a cellpose 3 'cyto'-architecture checkpoint")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise DataError(f"{path}: entry {key!r} is not a tensor")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise DataError(f"{path}: {key} has shape {tuple(tensor.shape)}, the cellpose 3 "
                            f"network expects {tuple(expected[key].shape)}",
                            "is it a checkpoint of another architecture or number of outputs?")


def new_model(device: torch.device) -> Any:
    """A randomly initialised cellpose 3 ``CellposeModel`` (CPnet, 2 input channels).

    ``pretrained_model=False`` with no ``model_type``: cellpose neither downloads nor
    substitutes a default model. mkldnn off: its MKL-DNN path breaks on some CPUs and
    in training; the speed difference is small.
    """
    from cellpose import models

    model = models.CellposeModel(pretrained_model=False, model_type=None, mkldnn=False,
                                 device=device, nchan=2, diam_mean=DEFAULT_DIAMETER)
    model.net.mkldnn = False
    model.mkldnn = False
    model.net.to(device)
    return model


def load_weights(model: Any, path: Path) -> None:
    """Load a cellpose 3 checkpoint into ``model`` (safely, shapes checked) and take its diameters."""
    state = load_state_dict(path)
    net = model.net
    _check_state_dict(state, net.state_dict(), path)
    net.load_state_dict(state, strict=False)  # only diam_mean/diam_labels may be absent
    sync_diameters(model, str(path))


def sync_diameters(model: Any, where: str) -> None:
    """Copy the network's stored ``diam_mean`` / ``diam_labels`` to the model, as cellpose does."""
    net = model.net
    model.diam_mean = float(net.diam_mean.detach().cpu()[0])
    model.diam_labels = float(net.diam_labels.detach().cpu()[0])
    if not (model.diam_mean > 0 and model.diam_labels > 0):
        raise DataError(f"{where}: stored diameters are not positive "
                        f"(diam_mean {model.diam_mean}, diam_labels {model.diam_labels})")


def run_eval(model: Any, image: np.ndarray, *, diameter: float, flow_threshold: float = DEFAULT_FLOW_THRESHOLD,
             cellprob_threshold: float = DEFAULT_CELLPROB_THRESHOLD, compute_masks: bool = True,
             autocast: Any = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """``CellposeModel.eval`` on one grayscale image as the backend runs it: instance labels
    and cellpose's flows list.

    Exactly ``eval(image, channels=[0, 0], diameter=diameter, flow_threshold=...,
    cellprob_threshold=...)`` with cellpose's defaults: its own 1st..99th percentile
    normalisation of ``image`` (so ``image`` should be the raw intensities, see
    :func:`monolayer.io.images.preprocess` ``"none"``), ``min_size`` 15,
    ``max_size_fraction`` 0.4. ``normalize`` is passed as a dict because cellpose 3.1
    writes a bool ``normalize`` into its module-wide ``normalize_default``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise DataError(f"cellpose backend takes one 2-D image, not shape {image.shape}")
    # "no seeds found ... no masks found" is not news: the record says 0 instances.
    with _quiet_sparse(), torch.inference_mode(), autocast or contextlib.nullcontext(), \
            _cellpose_log_level(logging.ERROR):
        masks, flows, _styles = model.eval(
            image, channels=[0, 0], diameter=diameter,
            normalize={"normalize": True, "invert": False}, flow_threshold=flow_threshold,
            cellprob_threshold=cellprob_threshold, min_size=MIN_SIZE,
            max_size_fraction=MAX_SIZE_FRACTION, compute_masks=compute_masks)
    return masks, flows


class CellposeBackend(TorchBackend):
    """Cellpose 3 instance segmentation; the mask is the union of the instances."""

    name: ClassVar[str] = "cellpose"
    score_kind = "probability"

    def __init__(self, *, runtime: RuntimeOptions, diameter: float | None = None,
                 flow_threshold: float = DEFAULT_FLOW_THRESHOLD,
                 cellprob_threshold: float = DEFAULT_CELLPROB_THRESHOLD) -> None:
        if diameter is not None and not (math.isfinite(diameter) and diameter > 0):
            raise UsageError(f"--diameter must be a positive number of pixels, not {diameter}")
        for label, value in (("flow threshold", flow_threshold),
                             ("cell probability threshold", cellprob_threshold)):
            if not math.isfinite(value):
                raise UsageError(f"{label} must be a finite number, not {value}")
        if flow_threshold < 0:
            raise UsageError(f"flow threshold must be >= 0 (0 turns the check off), not {flow_threshold}")
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)

        super().__init__(runtime)
        model = new_model(self.device)
        load_weights(model, self.weights.path)
        model.net.eval()
        self._model = model
        if self.autocast_dtype is not None:
            # cellpose turns outputs into numpy, which has no bfloat16.
            model.net.register_forward_hook(_outputs_to_float32)
        self.diameter = diameter
        self.effective_diameter = float(diameter) if diameter is not None else model.diam_labels

    @property
    def rescale(self) -> float:
        """The factor cellpose resizes the image by before the network."""
        return self._model.diam_mean / self.effective_diameter

    def _eval(self, image: np.ndarray, compute_masks: bool, flow_threshold: float,
              cellprob_threshold: float) -> tuple[np.ndarray, list[np.ndarray]]:
        return run_eval(self._model, image, diameter=self.effective_diameter, flow_threshold=flow_threshold,
                        cellprob_threshold=cellprob_threshold, compute_masks=compute_masks,
                        autocast=self.autocast())

    def predict(self, image: np.ndarray) -> Prediction:
        masks, flows = self._eval(image, True, self.flow_threshold, self.cellprob_threshold)
        labels = np.asarray(masks).reshape(image.shape)
        cellprob = np.asarray(flows[2], dtype=np.float32).reshape(image.shape)
        return Prediction(mask=labels > 0, score=_sigmoid(cellprob),
                          extras={"instances": int(len(np.unique(labels[labels > 0])))})

    def flows(self, image: np.ndarray) -> FlowOutputs:
        """Run the network once: flows and cell probability logits at the image's size."""
        _masks, flows = self._eval(image, False, self.flow_threshold, self.cellprob_threshold)
        dP = np.asarray(flows[1], dtype=np.float32).reshape((2, *image.shape))
        cellprob = np.asarray(flows[2], dtype=np.float32).reshape(image.shape)
        # As CellposeModel.eval with resample=True and niter=None.
        return FlowOutputs(dP=dP, cellprob=cellprob, niter=int(200 / self.rescale))

    def labels_from_flows(self, outputs: FlowOutputs, flow_threshold: float,
                          cellprob_threshold: float) -> np.ndarray:
        """Instance labels for one threshold pair: cellpose's own reconstruction step."""
        from cellpose import dynamics

        with _quiet_sparse():
            return dynamics.resize_and_compute_masks(
                outputs.dP, outputs.cellprob, niter=outputs.niter,
                cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold, interp=True,
                min_size=MIN_SIZE, max_size_fraction=MAX_SIZE_FRACTION, resize=None,
                device=self.device)

    def labels_over_grid(self, outputs: FlowOutputs, flow_thresholds: list[float],
                         cellprob_thresholds: list[float]
                         ) -> Iterator[tuple[float, float, np.ndarray]]:
        """Yield ``(flow_threshold, cellprob_threshold, labels)`` for every pair of the grid.

        Gives the same labels as :meth:`labels_from_flows` for each pair, with the work
        shared: following the flows depends only on the cell probability threshold, and
        each instance's flow error does not depend on the flow threshold, so both are
        computed once per cell probability threshold (cellpose's ``compute_masks`` then
        ``remove_bad_flow_masks`` then ``fill_holes_and_remove_small_masks``, unrolled).
        """
        from cellpose import dynamics, metrics, utils

        for cellprob_threshold in cellprob_thresholds:
            # Thresholds above every logit find no cell; cellpose would warn once per pair.
            with _quiet_sparse(), _cellpose_log_level(logging.ERROR):
                raw = dynamics.compute_masks(
                    outputs.dP, outputs.cellprob, niter=outputs.niter,
                    cellprob_threshold=cellprob_threshold, flow_threshold=0.0, interp=True,
                    min_size=-1, max_size_fraction=MAX_SIZE_FRACTION, device=self.device)
            errors = metrics.flow_error(raw, outputs.dP, self.device)[0] if raw.max() > 0 else None
            for flow_threshold in flow_thresholds:
                labels = raw.copy()
                if errors is not None and flow_threshold > 0:
                    bad = 1 + np.nonzero(errors > flow_threshold)[0]
                    labels[np.isin(labels, bad)] = 0
                yield (flow_threshold, cellprob_threshold,
                       utils.fill_holes_and_remove_small_masks(labels, min_size=MIN_SIZE))

    def describe(self) -> dict[str, Any]:
        return self.describe_with(None, {"diameter": self.effective_diameter,
                                         "flow_threshold": self.flow_threshold,
                                         "cellprob_threshold": self.cellprob_threshold})


@contextlib.contextmanager
def _cellpose_log_level(level: int) -> Iterator[None]:
    """Temporarily raise the level of cellpose's dynamics logger."""
    logger = logging.getLogger("cellpose.dynamics")
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def _quiet_sparse() -> Any:
    """Sparse-tensor invariant checks explicitly off, as torch leaves them by default.

    cellpose builds its instance labels with ``torch.sparse_coo_tensor``; leaving the
    choice implicit makes torch emit a UserWarning on every run.
    """
    return torch.sparse.check_sparse_tensor_invariants(enable=False)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """Float32 probabilities in [0, 1]; ``expit`` saturates large logits without overflow warnings."""
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float32))


def _outputs_to_float32(_module: Any, _inputs: Any, output: Any) -> Any:
    t1, style, *rest = output
    return (t1.float(), style.float(), *rest)
