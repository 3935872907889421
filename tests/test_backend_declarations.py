"""Issue 10: a backend is one place; parameters resolve flag > file > sidecar > default;
checkpoints carry their contract (sidecar) from train to segment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import blob_image, blob_truth
from monolayer.backends import BACKENDS
from monolayer.cli.backend_options import declared, setup_model
from monolayer.errors import DataError, UsageError


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# -- one place per backend ---------------------------------------------------------------

def test_every_backend_is_declared_by_its_own_module():
    for name, spec in BACKENDS.items():
        assert spec.target.startswith(f"monolayer.backends.{name}"), name
        assert spec.trainer is None or spec.trainer.startswith("monolayer.training."), name
        assert spec.preprocess in ("percentile", "none", "sam8"), name
        for option in spec.segment_options + spec.train_options:
            assert option.help and option.kind, (name, option.name)


def test_the_cli_offers_exactly_the_declared_options(cli):
    for command in ("segment", "train"):
        shown = cli(command, "--help").stdout
        for entry in declared(command).values():
            assert entry.option.cli_flag in shown, (command, entry.option.cli_flag)
    # The old hand-kept ownership tables are gone.
    import monolayer.cli.segment as segment_cli
    import monolayer.cli.train as train_cli

    assert not hasattr(segment_cli, "OWNERS") and not hasattr(train_cli, "OWNERS")
    assert not hasattr(train_cli, "TRAINERS")


@pytest.mark.parametrize("args, flag, owners", [
    (["--threshold", "0.3"], "--threshold", "sam, maskrcnn, unet"),
    (["-m", "unet", "-w", "x.pt", "--method", "canny"], "--method", "classical"),
    (["-m", "sam", "-w", "x.pt", "--flow-threshold", "1"], "--flow-threshold", "cellpose"),
    (["-m", "maskrcnn", "-w", "x.pt", "--diameter", "30"], "--diameter", "cellpose"),
    (["--device", "cpu"], "--device", "sam, cellpose, maskrcnn, unet"),
])
def test_an_option_of_another_model_is_a_usage_error_naming_its_owners(cli, small_images, tmp_path,
                                                                      args, flag, owners):
    run = cli("segment", small_images, "-o", tmp_path / "o", *args)
    assert run.code == 2 and run.stdout == ""
    line = one_line(run.stderr)
    assert f"{flag} does not apply to --model" in line and f"it applies to: {owners}" in line
    assert not (tmp_path / "o").exists()


def test_a_training_option_of_another_model_is_a_usage_error(cli, tmp_path):
    run = cli("train", "-m", "sam", "--train", tmp_path, "--epochs", "1", "-o", tmp_path / "m.pt",
              "--base-channels", "8")
    assert run.code == 2 and "--base-channels does not apply to training --model sam" in run.stderr
    assert "it applies to: unet" in run.stderr


# -- precedence: explicit flag > file given by a flag > the checkpoint's sidecar > default --------

def write_sidecar(weights: Path, model: str, **fields) -> None:
    doc = {"schema": "monolayer.checkpoint/1", "version": "0", "model": model,
           "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "architecture": {},
           "normalize": "percentile", "resize": None, "params": {}, "training_set": None}
    doc.update(fields)
    Path(str(weights) + ".monolayer.json").write_text(json.dumps(doc))


def test_precedence_is_flag_then_file_then_sidecar_then_default(tmp_path):
    spec = BACKENDS["cellpose"]
    weights = tmp_path / "cp.pth"
    weights.write_bytes(b"weights")
    thresholds = tmp_path / "thr.json"
    thresholds.write_text(json.dumps({"flow_threshold": 1.5, "cellprob_threshold": -2.0}))

    def values(**given):
        setup = setup_model(spec, {"weights": str(weights), **given})
        return ({k: setup.kwargs[k] for k in ("flow_threshold", "cellprob_threshold")},
                {k: setup.sources[k] for k in ("flow_threshold", "cellprob_threshold")})

    assert values() == ({"flow_threshold": 0.4, "cellprob_threshold": 0.0}, {"flow_threshold": "default",
                                                                           "cellprob_threshold": "default"})
    write_sidecar(weights, "cellpose", params={"flow_threshold": 0.7, "cellprob_threshold": 1.0})
    assert values()[0] == {"flow_threshold": 0.7, "cellprob_threshold": 1.0}
    assert values(thresholds=thresholds) == ({"flow_threshold": 1.5, "cellprob_threshold": -2.0},
                                             {"flow_threshold": "file", "cellprob_threshold": "file"})
    # The bug this replaces: an explicit flag equal to the default lost to the file.
    assert values(thresholds=thresholds, flow_threshold=0.4) == (
        {"flow_threshold": 0.4, "cellprob_threshold": -2.0}, {"flow_threshold": "flag", "cellprob_threshold": "file"})
    setup = setup_model(spec, {"weights": str(weights)}, ignore_sidecar=True)
    assert setup.kwargs["flow_threshold"] == 0.4 and "sidecar" not in setup.provenance


def test_a_sidecar_sets_the_input_contract_and_refuses_a_contradicting_flag(tmp_path):
    spec = BACKENDS["unet"]
    weights = tmp_path / "u.pt"
    weights.write_bytes(b"w")
    assert setup_model(spec, {"weights": str(weights)}).normalize == "percentile"
    write_sidecar(weights, "unet", resize=352, normalize="none", params={"threshold": 0.3})
    setup = setup_model(spec, {"weights": str(weights)})
    assert (setup.resize, setup.normalize, setup.kwargs["threshold"]) == (352, "none", 0.3)
    assert setup.sources["threshold"] == "sidecar"
    assert setup_model(spec, {"weights": str(weights)}, resize=352).resize == 352
    with pytest.raises(UsageError, match="--resize 512 contradicts the checkpoint, which was trained with --resize 352"):
        setup_model(spec, {"weights": str(weights)}, resize=512)
    with pytest.raises(UsageError, match="--normalize percentile contradicts"):
        setup_model(spec, {"weights": str(weights)}, normalize="percentile")
    free = setup_model(spec, {"weights": str(weights)}, resize=512, normalize="percentile", ignore_sidecar=True)
    assert (free.resize, free.normalize, free.kwargs["threshold"]) == (512, "percentile", 0.5)
    write_sidecar(weights, "sam")
    with pytest.raises(DataError, match="describes a 'sam' checkpoint, not 'unet'"):
        setup_model(spec, {"weights": str(weights)})


def test_default_normalisation_is_what_each_backends_weights_expect(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    expected = {"classical": "percentile", "sam": "sam8", "cellpose": "none", "maskrcnn": "percentile",
                "unet": "percentile"}
    for name, mode in expected.items():
        options = {"weights": str(weights)} if BACKENDS[name].needs_weights else {}
        assert setup_model(BACKENDS[name], options).normalize == mode
        assert setup_model(BACKENDS[name], options, normalize="percentile").normalize == "percentile"
        assert setup_model(BACKENDS[name], options, normalize="none").normalize == "none"


# -- the sidecar round trip: train -> segment ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained one epoch at --resize 64, with its sidecar."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from monolayer.cli.app import app

    root = tmp_path_factory.mktemp("trained")
    (root / "set" / "images").mkdir(parents=True)
    (root / "set" / "masks").mkdir()
    for i in range(2):
        centers = ((30 + 10 * i, 40), (60, 90))
        tifffile.imwrite(root / "set" / "images" / f"i{i}.tif", blob_image(centers=centers, seed=i))
        tifffile.imwrite(root / "set" / "masks" / f"i{i}.tif", blob_truth(centers=centers).astype(np.uint8))
    out = root / "unet.pt"
    result = CliRunner().invoke(app, ["train", "-m", "unet", "--train", str(root / "set"), "--epochs", "1",
                                      "--resize", "64", "--base-channels", "2", "--patch", "32", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    return root, out


def test_train_writes_a_sidecar_that_segment_applies(cli, trained, tmp_path):
    root, out = trained
    sidecar = json.loads(Path(str(out) + ".monolayer.json").read_text())
    assert sidecar["schema"] == "monolayer.checkpoint/1" and sidecar["model"] == "unet"
    assert sidecar["weights_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (sidecar["resize"], sidecar["normalize"], sidecar["params"]) == (64, "percentile", {"threshold": 0.5})
    assert len(sidecar["training_set"]) == 64 and sidecar["architecture"]["base_channels"] == 2
    run = cli("segment", root / "set" / "images", "-m", "unet", "-w", out, "-o", tmp_path / "p", "-q")
    assert run.code == 0, run.stderr
    params = run.records[0]["params"]
    assert params["resize"] == 64 and params["normalize"] == "percentile"
    assert params["sidecar"]["path"] == str(out) + ".monolayer.json"
    assert params["sources"]["threshold"] == "sidecar"
    # No need to repeat --resize: the README's old trap is gone. A contradicting one is refused.
    clash = cli("segment", root / "set" / "images", "-m", "unet", "-w", out, "-o", tmp_path / "q", "--resize", "96")
    assert clash.code == 2 and clash.stdout == "" and "--ignore-sidecar" in one_line(clash.stderr)
    free = cli("segment", root / "set" / "images", "-m", "unet", "-w", out, "-o", tmp_path / "r",
               "--resize", "96", "--ignore-sidecar", "-q")
    assert free.code == 0 and free.records[0]["params"]["resize"] == 96
    assert "sidecar" not in free.records[0]["params"]


def test_a_sidecar_of_other_weights_is_refused(cli, trained, tmp_path):
    root, out = trained
    copy = tmp_path / "unet.pt"
    copy.write_bytes(out.read_bytes())
    side = json.loads(Path(str(out) + ".monolayer.json").read_text())
    side["weights_sha256"] = "0" * 64
    Path(str(copy) + ".monolayer.json").write_text(json.dumps(side))
    run = cli("segment", root / "set" / "images", "-m", "unet", "-w", copy, "-o", tmp_path / "p")
    assert run.code == 65 and run.stdout == ""
    assert "was made for other weights" in one_line(run.stderr)


def test_a_plain_third_party_checkpoint_without_sidecar_still_works(cli, trained, tmp_path):
    root, out = trained
    plain = tmp_path / "plain.pt"
    plain.write_bytes(out.read_bytes())
    run = cli("segment", root / "set" / "images", "-m", "unet", "-w", plain, "-o", tmp_path / "p", "-q")
    assert run.code == 0, run.stderr
    params = run.records[0]["params"]
    assert params["resize"] is None and params["normalize"] == "percentile" and "sidecar" not in params


def test_a_thresholds_file_tuned_for_other_weights_is_refused(tmp_path):
    from types import SimpleNamespace

    from monolayer.cli.backend_options import describe_setup

    weights = tmp_path / "cp.pth"
    weights.write_bytes(b"weights")
    thresholds = tmp_path / "thr.json"
    thresholds.write_text(json.dumps({"flow_threshold": 1.5, "cellprob_threshold": -2.0,
                                      "weights_sha256": "1" * 64}))
    setup = setup_model(BACKENDS["cellpose"], {"weights": str(weights), "thresholds": thresholds})
    backend = SimpleNamespace(describe=lambda: {"model": "cellpose", "weights": str(weights),
                                                "weights_sha256": "2" * 64, "params": {}})
    with pytest.raises(DataError, match="thr.json was made for other weights"):
        describe_setup(backend, setup)
    backend = SimpleNamespace(describe=lambda: {"model": "cellpose", "weights": str(weights),
                                                "weights_sha256": "1" * 64, "params": {"flow_threshold": 1.5}})
    params = describe_setup(backend, setup)["params"]
    assert params["thresholds"]["path"] == str(thresholds) and params["sources"]["flow_threshold"] == "file"


@pytest.mark.parametrize("params, words", [
    ({"threshold": True}, "threshold True is not a number"),
    ({"threshold": "0.3"}, "is not a finite number"),
    ({"threshold": None}, "is not a finite number"),
    ({"threshold": [0.5]}, "is not a finite number"),
    ({"threshold": 7}, "threshold 7 is outside [0.0, 1.0]"),
])
def test_a_sidecar_value_of_the_wrong_type_or_range_names_the_sidecar(tmp_path, params, words):
    weights = tmp_path / "u.pt"
    weights.write_bytes(b"w")
    write_sidecar(weights, "unet", params=params)
    with pytest.raises(DataError, match=r"u\.pt\.monolayer\.json: ") as caught:
        setup_model(BACKENDS["unet"], {"weights": str(weights)})
    assert words in str(caught.value)
    with pytest.raises(UsageError, match="--threshold 7 is outside"):
        setup_model(BACKENDS["unet"], {"weights": str(weights), "threshold": 7})


def test_cellpose_values_are_checked_wherever_they_come_from(tmp_path):
    weights = tmp_path / "c.pth"
    weights.write_bytes(b"w")
    write_sidecar(weights, "cellpose", params={"diameter": True})
    with pytest.raises(DataError, match="diameter True is not a number"):
        setup_model(BACKENDS["cellpose"], {"weights": str(weights)})
    write_sidecar(weights, "cellpose", params={"diameter": 20.0, "flow_threshold": -1})
    with pytest.raises(DataError, match="flow_threshold -1 is outside"):
        setup_model(BACKENDS["cellpose"], {"weights": str(weights)})
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"flow_threshold": 0.5, "cellprob_threshold": 0, "weights_sha256": 5}))
    with pytest.raises(DataError, match="'weights_sha256' is 5, not a SHA-256"):
        setup_model(BACKENDS["cellpose"], {"weights": str(weights), "thresholds": thresholds})


def test_a_linked_checkpoint_finds_its_sidecar_and_a_broken_sidecar_is_an_error(tmp_path):
    run = tmp_path / "run7"
    run.mkdir()
    weights = run / "unet.pt"
    weights.write_bytes(b"w")
    write_sidecar(weights, "unet", resize=96)
    link = tmp_path / "current.pt"
    link.symlink_to(weights)
    assert setup_model(BACKENDS["unet"], {"weights": str(link)}).resize == 96
    with pytest.raises(UsageError, match="contradicts"):
        setup_model(BACKENDS["unet"], {"weights": str(link)}, resize=128)
    sidecar = Path(str(weights) + ".monolayer.json")
    sidecar.unlink()
    sidecar.mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        setup_model(BACKENDS["unet"], {"weights": str(weights)})
    sidecar.rmdir()
    sidecar.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(DataError, match="not a regular file"):
        setup_model(BACKENDS["unet"], {"weights": str(weights)})
