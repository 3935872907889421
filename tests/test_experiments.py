"""stats rounds / compare / movie and evaluate --tag, on synthetic experiments with known answers."""

import json

import numpy as np
import pytest
import tifffile

from monolayer.hypothesis_tests import cliffs_delta, mann_whitney


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def evaluation(strategy, repeat, rnd, errors):
    return [{"image": f"t{i}.tif", "strategy": strategy, "repeat": repeat, "round": rnd,
             "abs_confluence_error": e} for i, e in enumerate(errors)]


@pytest.fixture
def experiment(tmp_path):
    """Two strategies x 5 repeats x 2 rounds; in round 2 'entropy' is clearly better."""
    files = []
    for rep in range(5):
        for rnd in (1, 2):
            for strategy in ("entropy", "random"):
                base = 0.2 if rnd == 1 else (0.05 if strategy == "entropy" else 0.15)
                errors = [base + 0.01 * rep, base + 0.01 * rep + 0.02]
                files.append(write(tmp_path / f"eval_{strategy}_{rep}_{rnd}.jsonl",
                                   evaluation(strategy, rep, rnd, errors)))
    return files


def test_rounds_summaries_and_tests(cli, experiment, tmp_path):
    run = cli("stats", "rounds", *experiment, "--plot", tmp_path / "rounds.png")
    assert run.code == 0, run.stderr
    summaries = {(r["round"], r["strategy"]): r for r in run.records if r["record"] == "summary"}
    tests = {r["round"]: r for r in run.records if r["record"] == "test"}
    per_repeat = [0.06 + 0.01 * rep for rep in range(5)]  # mean of base+0.01rep and +0.02
    assert summaries[(2, "entropy")]["n"] == 5
    assert summaries[(2, "entropy")]["mean"] == pytest.approx(np.mean(per_repeat))
    assert summaries[(2, "entropy")]["iqr"] == pytest.approx(np.subtract(*np.percentile(per_repeat, [75, 25])))
    random_r2 = [0.16 + 0.01 * rep for rep in range(5)]
    u, p = mann_whitney(per_repeat, random_r2)
    assert tests[2]["u"] == u and tests[2]["p"] == pytest.approx(p)
    assert tests[2]["p_adjusted"] == pytest.approx(min(1.0, 2 * p))  # Holm over 2 rounds, smallest p
    assert tests[2]["significant"] and not tests[1]["significant"]
    assert tests[2]["cliffs_delta"] == cliffs_delta(per_repeat, random_r2) == -1.0
    png = (tmp_path / "rounds.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rounds_needs_tags(cli, tmp_path):
    f = write(tmp_path / "e.jsonl", [{"image": "a", "abs_confluence_error": 0.1}])
    run = cli("stats", "rounds", f)
    assert run.code == 65 and "--tag strategy=VALUE" in run.stderr


def test_compare_lazy_and_exact(cli, tmp_path):
    lazy = write(tmp_path / "lazy.jsonl", [{"image": f"{i}", "abs_confluence_error": v}
                                           for i, v in enumerate([0.01, 0.02, 0.03])])
    exact = write(tmp_path / "exact.jsonl", [{"image": f"{i}", "abs_confluence_error": v}
                                             for i, v in enumerate([0.02, 0.03, 0.05])])
    run = cli("stats", "compare", lazy, exact, "--plot", tmp_path / "c.png")
    assert run.code == 0, run.stderr
    test = run.records[-1]
    assert test["paired_images"] == 3 and test["mean_paired_difference"] == pytest.approx(-0.04 / 3)
    assert test["cliffs_delta"] == cliffs_delta([0.01, 0.02, 0.03], [0.02, 0.03, 0.05])
    assert [r["label"] for r in run.records[:2]] == ["lazy", "exact"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_movie_positions_from_manifests(cli, tmp_path):
    frames = [{"image": f"frame{i:03d}.tif"} for i in range(10)]

    def manifest(name, strategy, picks):
        history = [{"round": 0, "strategy": "random", "picked": ["frame000.tif"]}]
        history += [{"round": r, "strategy": strategy, "picked": [{"image": p}]} for r, p in enumerate(picks, 1)]
        train = frames[:1] + [{"image": p} for p in picks]
        doc = {"schema": "monolayer.al-manifest/1", "seed": 0, "round": len(picks), "train": train,
               "test": [], "pool": [f for f in frames[1:] if f["image"] not in picks], "history": history}
        (tmp_path / name).write_text(json.dumps(doc))
        return tmp_path / name

    al = [manifest(f"al{i}.json", "entropy", ["frame005.tif", "frame006.tif", "frame007.tif"]) for i in range(3)]
    rnd = [manifest(f"r{i}.json", "random", ["frame001.tif", "frame009.tif", "frame002.tif"]) for i in range(3)]
    run = cli("stats", "movie", *al, *rnd)
    assert run.code == 0, run.stderr
    s = {(r["round"], r["strategy"]): r["mean"] for r in run.records if r["record"] == "summary"}
    assert s[(2, "entropy")] == 1.0 and s[(2, "random")] == 8.0 and s[(3, "random")] == 7.0


def test_evaluate_tags(cli, small_images, tmp_path):
    pred = cli("segment", small_images, "--out", tmp_path / "p")
    (tmp_path / "pred.jsonl").write_text(pred.stdout)
    truth = tmp_path / "truth"
    truth.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(truth / f"{name}.tif", np.ones((96, 128), np.uint8))
    run = cli("evaluate", tmp_path / "pred.jsonl", "--truth", truth, "--tag", "strategy=entropy",
              "--tag", "round=3", "--tag", "repeat=1", "-q")
    assert run.code == 0, run.stderr
    assert all(r["strategy"] == "entropy" and r["round"] == 3 and r["repeat"] == 1 for r in run.records)
    assert cli("evaluate", tmp_path / "pred.jsonl", "--truth", truth, "--tag", "image=x").code == 2
