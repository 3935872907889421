"""Shared fixtures: the shipped example images, synthetic images, and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from monolayer.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "usiigaci"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets an empty weights cache: a user's cached checkpoints never leak in."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MONOLAYER_CACHE", str(cache))
    return cache


def _no_network(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("a model tried to open a network connection")


@pytest.fixture(scope="module")
def no_network():
    """Refuse outgoing connections for a module's tests: loading weights must never download."""
    import socket

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        yield


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory) -> Path:
    """A 5 M-parameter Segment Anything (embed dim 64, depth 2) saved as a user's checkpoint is."""
    import torch
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    model = _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                       encoder_global_attn_indexes=[1])
    path = tmp_path_factory.mktemp("w") / "tiny_sam.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sensitive_sam(tiny_sam, tmp_path_factory) -> Path:
    """The tiny random SAM with its mask hypernetworks' output layers scaled 60x: logits
    spread over about -8..+4 instead of +-0.1, so a different input shows in the map."""
    import torch

    state = torch.load(tiny_sam, weights_only=True)
    for key, value in state.items():
        if key.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in key:
            state[key] = value * 60
    path = tmp_path_factory.mktemp("sam") / "sensitive_sam.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def image8(tmp_path_factory) -> Path:
    """set30 as an 8-bit camera would store it (the 16-bit values / 257): 19..255, not stretched."""
    path = tmp_path_factory.mktemp("img") / "set30_8bit.tif"
    tifffile.imwrite(path, np.round(tifffile.imread(EXAMPLES / "images" / "set30.tif") / 257).astype(np.uint8))
    return path


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


class Run:
    """Result of a CLI call with parsed JSON Lines on stdout."""

    def __init__(self, result: Any) -> None:
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Run:
        return Run(runner.invoke(app, [str(a) for a in args], input=input))

    return invoke


def blob_image(shape=(96, 128), centers=((30, 40), (60, 90)), radius=14, seed=0) -> np.ndarray:
    """A phase-contrast-like 8-bit image: textured discs with bright rims on a flat, noisy field."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 120.0) + rng.normal(0, 1.5, shape)
    for cy, cx in centers:
        r = np.hypot(yy - cy, xx - cx)
        inside = r < radius
        img[inside] += rng.normal(0, 25, inside.sum())
        img[(r >= radius) & (r < radius + 2)] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def blob_truth(shape=(96, 128), centers=((30, 40), (60, 90)), radius=14) -> np.ndarray:
    """The cells of :func:`blob_image`, rims excluded."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, bool)
    for cy, cx in centers:
        truth |= np.hypot(yy - cy, xx - cx) < radius
    return truth


@pytest.fixture
def small_images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", blob_image(seed=1))
    tifffile.imwrite(folder / "b.tif", blob_image(centers=((48, 64),), seed=2))
    return folder
