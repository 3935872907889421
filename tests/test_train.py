"""train --model unet: a checkpoint segment loads, a validation log, and resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch


@pytest.fixture
def truth(cli, examples, tmp_path):
    run = cli("coco2mask", examples / "annotations.json", "--images", examples / "images", "--out", tmp_path / "t")
    (tmp_path / "truth.jsonl").write_text(run.stdout)
    return tmp_path / "truth.jsonl"


TINY = ["--resize", "128", "--base-channels", "4", "--patch", "64", "--batch-size", "4", "--device", "cpu"]


def test_train_then_segment(cli, truth, examples, tmp_path):
    out = tmp_path / "unet.pt"
    run = cli("train", "--model", "unet", "--train", truth, "--val", truth, "--epochs", "2", "--out", out, *TINY)
    assert run.code == 0, run.stderr
    assert [r["epoch"] for r in run.records] == [1, 2]
    assert all({"loss", "val_iou", "val_abs_confluence_error"} <= set(r) for r in run.records)
    assert run.records[0]["schema"] == "monolayer.train/1"
    seg = cli("segment", examples / "images" / "set30.tif", "-m", "unet", "-w", out, "--resize", "128",
              "--device", "cpu", "--out", tmp_path / "p", "--save-prob")
    assert seg.code == 0, seg.stderr
    assert seg.records[0]["params"]["base_channels"] == 4 and seg.records[0]["width"] == 1024


def test_options_that_do_not_fit_and_changed_options(cli, truth, tmp_path):
    no_weights = cli("train", "--model", "sam", "--train", truth, "--epochs", "1", "--out", tmp_path / "s.pt")
    assert no_weights.code == 2 and "--weights" in no_weights.stderr
    classical = cli("train", "--model", "classical", "--train", truth, "--epochs", "1", "--out", tmp_path / "c.pt")
    assert classical.code == 2 and "nothing" not in classical.stdout
    wrong = cli("train", "--model", "maskrcnn", "--train", truth, "--epochs", "1", "--out", tmp_path / "m.pt",
                "--base-channels", "4")
    assert wrong.code == 2 and "--base-channels does not apply" in wrong.stderr
    assert not (tmp_path / "s.pt").exists() and not (tmp_path / "m.pt").exists()
    out = tmp_path / "unet.pt"
    assert cli("train", "--model", "unet", "--train", truth, "--epochs", "1", "--out", out, *TINY).code == 0
    changed = cli("train", "--model", "unet", "--train", truth, "--epochs", "2", "--out", out, *TINY, "--lr", "0.01")
    assert changed.code == 2 and "different training configuration" in changed.stderr
    assert cli("train", "--model", "unet", "--train", truth, "--epochs", "2", "--out", out, *TINY,
               "--lr", "0.01", "--restart").code == 0


def test_killed_run_resumes_without_lost_or_duplicated_epochs(truth, tmp_path):
    epochs = 6
    command = [sys.executable, "-m", "monolayer", "train", "--model", "unet", "--train", str(truth),
               "--epochs", str(epochs), "--crops-per-image", "24", "-q", *TINY]
    reference = subprocess.run([*command, "--out", str(tmp_path / "ref.pt")], capture_output=True, text=True,
                               check=True)
    out = tmp_path / "unet.pt"
    log = tmp_path / "log.jsonl"
    with open(log, "w") as handle:
        proc = subprocess.Popen([*command, "--out", str(out)], stdout=handle, stderr=subprocess.DEVNULL)
        state = out.with_name(out.name + ".state")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    done = torch.load(state, weights_only=True)["epoch"]
                except Exception:  # caught mid-rename on some filesystems; look again
                    done = 0
                if done >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = [json.loads(l)["epoch"] for l in log.read_text().splitlines()]
    assert killed_at and killed_at[-1] < epochs
    with open(log, "w") as handle:  # the same command and redirect, run again
        subprocess.run([*command, "--out", str(out)], stdout=handle, check=True)
    records = [json.loads(l) for l in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    expected = [json.loads(l)["loss"] for l in reference.stdout.splitlines()]
    assert [r["loss"] for r in records] == pytest.approx(expected, rel=1e-5)
