"""U-Net (Ronneberger et al. 2015) trained from scratch: a sigmoid probability map per pixel.

The network follows the layout of milesial/Pytorch-UNet, which the paper's
authors used, with the same module names, so a ``state_dict()`` saved from that
code loads here unchanged:

* ``DoubleConv`` = (3x3 conv without bias, BatchNorm, ReLU) x 2;
* ``Down`` = 2x2 max-pool, then ``DoubleConv``;
* ``Up`` = bilinear up-sampling (or a 2x2 transposed convolution), concatenation
  with the skip connection, then ``DoubleConv``;
* channels 64-128-256-512-1024; with bilinear up-sampling the bottleneck has
  1024 // 2 = 512 channels;
* ``OutConv`` = 1x1 convolution to one channel, read through a sigmoid.

The input is one grayscale channel: phase contrast has no colour. Checkpoints
trained on 3-channel input (milesial's default ``n_channels=3``) also load; the
grayscale image is then repeated into three channels.

Everything about the architecture is read from the checkpoint's tensor shapes
(see :func:`infer_config`), so a full-size model and a tiny test model load
through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monolayer.backends._base import Prediction, predict_by_shape
from monolayer.backends._torch import RuntimeOptions, TorchBackend
from monolayer.errors import DataError, UsageError
from monolayer.weights import load_state_dict, load_strict, strip_data_parallel

PAD_MULTIPLE = 16
"""Four 2x2 poolings: each side must divide by 2**4 for the skips to line up exactly."""


class DoubleConv(nn.Module):
    """(3x3 conv, BatchNorm, ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Up-sample, concatenate the skip connection, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Only needed for sides that are not multiples of 16; the backend pads so they are.
        dy = skip.shape[2] - x.shape[2]
        dx = skip.shape[3] - x.shape[3]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to the output logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The paper's U-Net; ``base_channels=64, bilinear=True`` is the full-size model.

    Returns logits of shape (N, n_classes, H, W); H and W should be multiples of 16.
    """

    def __init__(self, n_channels: int = 1, n_classes: int = 1, *, base_channels: int = 64,
                 bilinear: bool = True) -> None:
        super().__init__()
        c = base_channels
        factor = 2 if bilinear else 1
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.base_channels = base_channels
        self.bilinear = bilinear
        self.inc = DoubleConv(n_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.outc = OutConv(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


@dataclass(frozen=True)
class UNetConfig:
    """The architecture a checkpoint was saved from."""

    n_channels: int
    base_channels: int
    bilinear: bool


def _shape(state: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{where}: not a U-Net checkpoint (no tensor {key!r})",
                        "expected the state_dict() of monolayer's or milesial/Pytorch-UNet's UNet")
    return tuple(value.shape)


def infer_config(state: dict[str, Any], where: str = "checkpoint") -> UNetConfig:
    """Read the architecture from tensor shapes.

    * input channels and ``base_channels``: the first convolution's weight,
      ``inc.double_conv.0.weight`` of shape (base, in, 3, 3);
    * bilinear vs transposed: a transposed convolution has weights
      (``up1.up.weight``); bilinear up-sampling has none. The bottleneck width
      (``down4``'s last conv: 8 x base if bilinear, 16 x base otherwise) must agree;
    * one output channel (``outc.conv.weight`` of shape (1, base, 1, 1)).

    Everything else is then checked by loading with ``strict=True``.
    """
    base, n_channels, kh, kw = (_shape(state, "inc.double_conv.0.weight", where) + (0, 0, 0, 0))[:4]
    if (kh, kw) != (3, 3) or base < 1 or n_channels not in (1, 3):
        raise DataError(f"{where}: first convolution has shape "
                        f"{_shape(state, 'inc.double_conv.0.weight', where)}, expected (base, 1 or 3, 3, 3)")
    bilinear = "up1.up.weight" not in state
    bottleneck = _shape(state, "down4.maxpool_conv.1.double_conv.3.weight", where)[0]
    expected = 8 * base if bilinear else 16 * base
    if bottleneck != expected:
        raise DataError(f"{where}: bottleneck has {bottleneck} channels; a "
                        f"{'bilinear' if bilinear else 'transposed-convolution'} U-Net with "
                        f"base {base} has {expected}")
    out = _shape(state, "outc.conv.weight", where)
    if out[0] != 1:
        raise DataError(f"{where}: U-Net has {out[0]} output channels, expected 1 "
                        "(one foreground logit read through a sigmoid)",
                        "train with n_classes=1")
    return UNetConfig(n_channels=n_channels, base_channels=base, bilinear=bilinear)


def build_from_state(state: dict[str, Any], where: str = "checkpoint") -> UNet:
    """A UNet with the checkpoint's architecture and weights (strict: every key must fit)."""
    state = dict(state)
    state.pop("mask_values", None)  # milesial's train.py stores the label values beside the weights
    state = strip_data_parallel(state)
    config = infer_config(state, where)
    model = UNet(config.n_channels, 1, base_channels=config.base_channels, bilinear=config.bilinear)
    return load_strict(model, state, where, f"a U-Net with base {config.base_channels}, "
                       f"{'bilinear' if config.bilinear else 'transposed'} up-sampling")


class UNetBackend(TorchBackend):
    """Sigmoid probability map of a U-Net; foreground = probability >= ``threshold`` (absolute)."""

    name: ClassVar[str] = "unet"
    score_kind = "probability"

    def __init__(self, *, runtime: RuntimeOptions, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"--threshold {threshold} is outside [0, 1]")
        super().__init__(runtime)
        self.threshold = float(threshold)
        model = build_from_state(load_state_dict(self.weights.path), str(self.weights.path))
        self.config = UNetConfig(model.n_channels, model.base_channels, model.bilinear)
        self.model = model.to(self.device).eval()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, H, W) for a stack of equal-shape images (N, H, W)."""
        n, h, w = batch.shape
        pad_h, pad_w = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
        # numpy's reflect also copes with pads longer than the image (tiny inputs).
        padded = np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
        x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).unsqueeze(1)
        x = x.to(self.device)
        if self.config.n_channels != 1:
            x = x.expand(-1, self.config.n_channels, -1, -1)
        with torch.inference_mode():
            with self.autocast():
                logits = self.model(x)
            logits = logits[:, 0, :h, :w].float()  # crop the padding before anything else
            prob = torch.sigmoid(logits)
        return prob.cpu().numpy().astype(np.float32, copy=False)

    def _prediction(self, prob: np.ndarray) -> Prediction:
        prob = np.ascontiguousarray(prob, dtype=np.float32)
        return Prediction(mask=prob >= np.float32(self.threshold), score=prob, threshold=self.threshold)

    def predict(self, image: np.ndarray) -> Prediction:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise DataError(f"U-Net expects one 2-D grayscale image, got shape {image.shape}")
        return self._prediction(self._forward(image[None])[0])

    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """One forward pass per group of equal-shape images, at most ``batch_size`` at once."""
        arrays = [np.asarray(im, dtype=np.float32) for im in images]
        for im in arrays:
            if im.ndim != 2:
                raise DataError(f"U-Net expects one 2-D grayscale image, got shape {im.shape}")

        def run(chunk: list[np.ndarray]) -> list[Prediction]:
            return [self._prediction(prob) for prob in self._forward(np.stack(chunk))]

        return predict_by_shape(arrays, self.batch_size, run)

    def describe(self) -> dict[str, Any]:
        return self.describe_with(None, {"threshold": self.threshold,
                                         "base_channels": self.config.base_channels,
                                         "bilinear": self.config.bilinear,
                                         "input_channels": self.config.n_channels})
