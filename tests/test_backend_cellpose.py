"""Cellpose backend: a random-init cellpose 3 network loaded through the real loading code.

No test may reach the network: sockets are blocked while backends are built and run.
"""

from __future__ import annotations

import json

import tifffile
import os
from pathlib import Path

import numpy as np
import pytest

import torch
import cellpose  # noqa: F401  (needed by the backend under test)

from monolayer.backends._torch import RuntimeOptions  # noqa: E402
from monolayer.backends.cellpose import CellposeBackend  # noqa: E402
from monolayer.metrics import mean_diameter  # noqa: E402
from monolayer.commands.cellpose_search import (  # noqa: E402
    CELLPROB_THRESHOLDS,
    FLOW_THRESHOLDS,
    search_thresholds,
    write_thresholds,
)
from monolayer.errors import DataError  # noqa: E402
from monolayer.io.images import load_image, normalize, to_grayscale  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "usiigaci"
PREDICT_CROP = (slice(0, 256), slice(0, 200))      # non-square, keeps CPU time low
SEARCH_CROPS = {"set20": (slice(300, 428), slice(300, 396)),  # 128 x 96, cells in both
                "set26": (slice(300, 428), slice(300, 396))}


@pytest.fixture(scope="module", autouse=True)
def offline(no_network):
    """Every test here runs with outgoing connections refused (see conftest)."""


def _image(name: str, crop: tuple[slice, slice]) -> np.ndarray:
    return normalize(to_grayscale(load_image(EXAMPLES / "images" / f"{name}.tif").array))[crop]


def _truth(name: str, crop: tuple[slice, slice]) -> np.ndarray:
    return load_image(EXAMPLES / "masks" / f"{name}.tif").array[crop] > 0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from cellpose.resnet_torch import CPnet

    torch.manual_seed(0)
    # cellpose 3.1's CellposeModel network: nbase [nchan=2, 32, 64, 128, 256], 3 outputs, 3x3.
    net = CPnet([2, 32, 64, 128, 256], 3, 3, mkldnn=False, max_pool=True, diam_mean=30.0)
    path = tmp_path_factory.mktemp("cellpose") / "random_cp3.pth"
    torch.save(net.state_dict(), path)
    return path


def _backend(weights: Path, **kwargs) -> CellposeBackend:
    return CellposeBackend(runtime=RuntimeOptions(weights=str(weights), device="cpu", seed=0), **kwargs)


@pytest.fixture(scope="module")
def backend(weights) -> CellposeBackend:
    return _backend(weights, diameter=30)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _image("set30", PREDICT_CROP)


@pytest.fixture(scope="module")
def prediction(backend, image):
    return backend.predict(image)


def test_predict_shapes_and_types(backend, image, prediction):
    assert image.shape == (256, 200)
    assert prediction.mask.shape == prediction.score.shape == image.shape
    assert prediction.mask.dtype == bool
    assert prediction.score.dtype == np.float32
    assert 0.0 <= prediction.score.min() <= prediction.score.max() <= 1.0
    assert isinstance(prediction.extras["instances"], int)
    assert backend.score_kind == "probability"
    record = backend.describe()
    assert record["model"] == "cellpose"
    assert record["params"]["diameter"] == 30.0
    assert record["params"]["flow_threshold"] == 0.4
    assert record["params"]["cellprob_threshold"] == 0.0
    assert len(record["weights_sha256"]) == 64


def test_same_weights_and_seed_give_identical_output(weights, image, prediction):
    again = _backend(weights, diameter=30).predict(image)
    assert np.array_equal(again.mask, prediction.mask)
    assert np.array_equal(again.score, prediction.score)
    assert again.extras == prediction.extras


def test_diameter_default_comes_from_checkpoint(weights):
    assert _backend(weights).effective_diameter == 30.0


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(DataError, match="refused"):
        _backend(path)
    assert not marker.exists()


@pytest.mark.parametrize("state", [{"W2": torch.zeros(1)}, {"conv.weight": torch.zeros(3, 3)}],
                         ids=["cellpose4", "other-network"])
def test_other_checkpoints_are_refused(tmp_path, state):
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(DataError, match="cellpose"):
        _backend(path)


def test_shared_grid_reconstruction_matches_cellpose(backend):
    image = _image("set20", SEARCH_CROPS["set20"])
    outputs = backend.flows(image)
    flows, probs = [0.0, 0.5, 3.0], [-1.0, -0.5, 0.0]
    for flow, prob, labels in backend.labels_over_grid(outputs, flows, probs):
        assert np.array_equal(labels, backend.labels_from_flows(outputs, flow, prob)), (flow, prob)


def test_threshold_search(backend, tmp_path):
    images = [_image(name, crop) for name, crop in SEARCH_CROPS.items()]
    truths = [_truth(name, crop) for name, crop in SEARCH_CROPS.items()]
    assert all(t.any() for t in truths)
    result = search_thresholds(backend, images, truths)
    assert len(result["grid"]) == 175 == len(FLOW_THRESHOLDS) * len(CELLPROB_THRESHOLDS)
    assert result["flow_threshold"] in FLOW_THRESHOLDS
    assert result["cellprob_threshold"] in CELLPROB_THRESHOLDS
    assert result["n_images"] == 2
    assert -1.0 <= result["score"] <= result["mean_iou"] <= 1.0
    best = max(entry["score"] for entry in result["grid"])
    assert result["score"] == best
    # Above every logit of a random network nothing is predicted: penalised, not just IoU 0.
    top = [e for e in result["grid"] if e["cellprob_threshold"] == 6.0]
    assert all(e["empty"] == 2 and e["score"] == -1.0 and e["mean_iou"] == 0.0 for e in top)

    path = tmp_path / "out" / "thresholds.json"
    write_thresholds(path, result)
    from monolayer.backends.cellpose import read_thresholds

    assert read_thresholds(path) == {"flow_threshold": result["flow_threshold"],
                                     "cellprob_threshold": result["cellprob_threshold"]}


def test_mean_diameter_of_two_discs():
    yy, xx = np.mgrid[:120, :200]
    labels = np.zeros((120, 200), dtype=np.uint16)
    labels[(yy - 40) ** 2 + (xx - 40) ** 2 <= 10 ** 2] = 1   # diameter 20
    labels[(yy - 60) ** 2 + (xx - 130) ** 2 <= 20 ** 2] = 2  # diameter 40
    assert mean_diameter([labels]) == pytest.approx(30.0, abs=1.0)
    assert mean_diameter([labels > 0]) == pytest.approx(30.0, abs=1.0)
    with pytest.raises(DataError):
        mean_diameter([np.zeros((5, 5), dtype=np.uint8)])


def test_segment_cli_on_the_full_non_square_image(cli, examples, weights, tmp_path):
    image = examples / "images" / "set30.tif"
    args = ("segment", image, "-m", "cellpose", "-w", weights, "--device", "cpu",
            "--diameter", "auto", "--truth", examples / "masks", "--out", tmp_path / "o", "--save-prob")
    run = cli(*args)
    assert run.code == 0, run.stderr
    [r] = run.records
    mask, prob = tifffile.imread(r["mask"]), tifffile.imread(r["prob"])
    assert mask.shape == prob.shape == (1022, 1024)
    assert r["confluence"] == (mask > 0).mean() and isinstance(r["instances"], int)
    labels = [tifffile.imread(p) for p in sorted((examples / "masks").glob("*.tif"))]
    assert r["params"]["diameter"] == pytest.approx(mean_diameter(labels))
    again = cli(*args)
    strip = lambda rec: {k: v for k, v in rec.items() if k != "seconds"}
    assert strip(again.records[0]) == strip(r)


def test_threshold_search_cli_writes_a_file_segment_reads(cli, examples, weights, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "truth").mkdir()
    for name in ("set20", "set26"):
        crop = np.s_[:96, :128]
        tifffile.imwrite(tmp_path / "imgs" / f"{name}.tif", tifffile.imread(examples / "images" / f"{name}.tif")[crop])
        tifffile.imwrite(tmp_path / "truth" / f"{name}.tif", tifffile.imread(examples / "masks" / f"{name}.tif")[crop])
    own = tmp_path / "cp.pth"  # a copy: the search writes a sidecar beside the weights it tuned
    own.write_bytes(Path(weights).read_bytes())
    run = cli("cellpose-thresholds", tmp_path / "imgs", "--truth", tmp_path / "truth", "-w", own,
              "--device", "cpu", "--diameter", "30", "--out", tmp_path / "thr.json")
    assert run.code == 0, run.stderr
    [record] = run.records
    saved = json.loads((tmp_path / "thr.json").read_text())
    assert len(saved["grid"]) == 175 and saved["flow_threshold"] == record["flow_threshold"]
    seg = cli("segment", tmp_path / "imgs", "-m", "cellpose", "-w", own, "--device", "cpu",
              "--diameter", "30", "--thresholds", tmp_path / "thr.json", "--out", tmp_path / "o")
    assert seg.code == 0, seg.stderr
    assert seg.records[0]["params"]["flow_threshold"] == record["flow_threshold"]
    assert seg.records[0]["params"]["cellprob_threshold"] == record["cellprob_threshold"]
    # The checkpoint's sidecar carries them: segment applies them without --thresholds.
    sidecar = json.loads(Path(str(own) + ".monolayer.json").read_text())
    assert record["sidecar"] == str(own) + ".monolayer.json" and sidecar["model"] == "cellpose"
    assert sidecar["params"] == {"flow_threshold": record["flow_threshold"],
                                 "cellprob_threshold": record["cellprob_threshold"]}
    assert sidecar["normalize"] == "none" and sidecar["weights_sha256"] == record["weights_sha256"]
    bare = cli("segment", tmp_path / "imgs", "-m", "cellpose", "-w", own, "--device", "cpu",
               "--diameter", "30", "--out", tmp_path / "b", "-q")
    assert bare.code == 0, bare.stderr
    params = bare.records[0]["params"]
    assert (params["flow_threshold"], params["sources"]["flow_threshold"]) == (record["flow_threshold"], "sidecar")


def test_bf16_runs_and_gives_the_image_shape(weights, image):
    bf16 = CellposeBackend(runtime=RuntimeOptions(weights=str(weights), device="cpu", seed=0, precision="bf16"),
                           diameter=30)
    prediction = bf16.predict(image)
    assert prediction.mask.shape == image.shape and prediction.score.dtype == np.float32
    assert bf16.describe()["params"]["precision"] == "bf16"
