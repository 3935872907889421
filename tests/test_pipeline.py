"""The shipped example pipeline, run as a user runs it: bash, real subprocesses, real images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_example_pipeline_end_to_end(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(ROOT / "examples" / "pipeline.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    truth = [json.loads(l) for l in (out / "truth.jsonl").read_text().splitlines()]
    assert len(truth) == 3 and all("error" not in r for r in truth)
    summary = {(r["method"], r["field"]): r for r in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}
    phase = summary[("phase", "abs_confluence_error")]
    canny = summary[("canny", "abs_confluence_error")]
    assert phase["n"] == canny["n"] == 3
    # The default method must estimate these real images' confluence well, and beat the baseline.
    assert phase["mean"] < 0.06
    assert phase["mean"] < canny["mean"]
    assert summary[("phase", "iou")]["mean"] > summary[("canny", "iou")]["mean"]
    # stdout of each stage was data only: every line of every file is a JSON record.
    for name in ("pred_phase.jsonl", "pred_canny.jsonl", "eval_phase.jsonl", "eval_canny.jsonl"):
        for line in (out / name).read_text().splitlines():
            assert json.loads(line)["schema"].startswith("monolayer.")
    assert "pipeline done" in proc.stderr and "abs_confluence_error" in proc.stderr


def test_pipe_segment_into_stats_via_stdin(tmp_path):
    """`monolayer segment ... | monolayer stats -`: the data path of a pipe is clean."""
    exe = [sys.executable, "-m", "monolayer"]
    img = ROOT / "examples" / "usiigaci" / "images" / "set30.tif"
    seg = subprocess.run([*exe, "segment", str(img), "--out", str(tmp_path / "m"), "-q"],
                         capture_output=True, text=True, check=True)
    stats = subprocess.run([*exe, "stats", "-", "--field", "confluence"], input=seg.stdout,
                           capture_output=True, text=True, check=True)
    [record] = [json.loads(l) for l in stats.stdout.splitlines()]
    assert record["n"] == 1 and record["mean"] == json.loads(seg.stdout)["confluence"]
    assert seg.stderr == "" and stats.stderr == ""


@pytest.mark.slow
def test_active_learning_example_script_on_the_examples(cli, examples, tmp_path):
    truth = cli("coco2mask", examples / "annotations.json", "--images", examples / "images", "--out", tmp_path / "t")
    (tmp_path / "truth.jsonl").write_text(truth.stdout)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               REPEATS="2", EPOCHS="1", K="1", INITIAL="1", TEST_SIZE="1", RESIZE="64",
               BASE_CHANNELS="2", PATCH="32")
    proc = subprocess.run(["bash", str(ROOT / "examples" / "al_experiment.sh"), str(tmp_path / "truth.jsonl"),
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(l) for l in (tmp_path / "out" / "rounds_abs_confluence_error.jsonl").read_text().splitlines()]
    summaries = [r for r in records if r["record"] == "summary"]
    # 3 images: 1 test, 1 initial, 1 in the pool -> rounds 0 and 1, for both strategies, 2 repeats each.
    assert {(r["strategy"], r["round"], r["n"]) for r in summaries} == {
        (s, rnd, 2) for s in ("entropy", "random") for rnd in (0, 1)}
    assert any(r["record"] == "test" for r in records)
    assert (tmp_path / "out" / "rounds_abs_confluence_error.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((tmp_path / "out" / "entropy_rep1.json").read_text())
    assert manifest["pool"] == [] and [h["strategy"] for h in manifest["history"]] == ["random", "entropy"]
