"""al-round: test set near 50 % confluence, seeded draws, ranked picks, an exhausted pool."""

import json

import pytest


@pytest.fixture
def truth(tmp_path):
    records = [{"image": f"img{i:02d}.tif", "mask": f"m{i}.tif", "confluence": c}
               for i, c in enumerate([0.1, 0.45, 0.52, 0.9, 0.3, 0.6, 0.05, 0.75, 0.2, 0.49])]
    path = tmp_path / "truth.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def manifest(path):
    return json.loads(path.read_text())


def test_init_picks_test_images_nearest_half_and_a_seeded_initial_set(cli, truth, tmp_path):
    run = cli("al-round", "init", "--images", truth, "--test-size", "3", "--initial", "2", "--seed", "7",
              "--out", tmp_path / "m.json")
    assert run.code == 0, run.stderr
    m = manifest(tmp_path / "m.json")
    assert [r["image"] for r in m["test"]] == ["img01.tif", "img02.tif", "img09.tif"]  # 0.45, 0.52, 0.49
    assert m["counts"] == {"train": 2, "test": 3, "pool": 5}
    assert [r["image"] for r in run.records] == [r["image"] for r in m["train"]]
    again = cli("al-round", "init", "--images", truth, "--test-size", "3", "--initial", "2", "--seed", "7",
                "--out", tmp_path / "m2.json")
    assert again.records == run.records
    assert manifest(tmp_path / "m2.json")["train"] == m["train"]
    assert cli("al-round", "init", "--images", truth, "--initial", "2", "--out", tmp_path / "m.json").code == 2


def test_random_rounds_until_the_pool_is_empty(cli, truth, tmp_path):
    cli("al-round", "init", "--images", truth, "--test-size", "2", "--initial", "2", "--seed", "3",
        "--out", tmp_path / "m.json")
    sizes = []
    for _ in range(3):
        run = cli("al-round", "next", tmp_path / "m.json", "--strategy", "random", "--k", "2")
        assert run.code == 0, run.stderr
        sizes.append(len(run.records))
    assert sizes == [4, 6, 8]
    m = manifest(tmp_path / "m.json")
    assert m["round"] == 3 and m["pool"] == [] and len(m["history"]) == 4
    train = [r["image"] for r in m["train"]]
    assert len(train) == len(set(train)) == 8
    done = cli("al-round", "next", tmp_path / "m.json", "--strategy", "random")
    assert done.code == 2 and "pool is empty" in done.stderr


def test_entropy_strategy_takes_the_top_ranked_pool_images(cli, truth, tmp_path):
    cli("al-round", "init", "--images", truth, "--test-size", "2", "--initial", "2", "--seed", "3",
        "--out", tmp_path / "m.json")
    pool = [r["image"] for r in manifest(tmp_path / "m.json")["pool"]]
    ranked = [{"image": image, "rank": i + 1, "entropy": 1.0 - i / 10} for i, image in enumerate(reversed(pool))]
    ranked.append({"image": "not-in-pool.tif", "rank": 0, "entropy": 9.0})
    (tmp_path / "ranked.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ranked))
    run = cli("al-round", "next", tmp_path / "m.json", "--strategy", "entropy", "--k", "2",
              "--ranked", tmp_path / "ranked.jsonl")
    assert run.code == 0, run.stderr
    last = manifest(tmp_path / "m.json")["history"][-1]
    assert [p["image"] for p in last["picked"]] == [pool[-1], pool[-2]]
    assert last["strategy"] == "entropy" and "most uncertain" in last["why"]
    assert cli("al-round", "next", tmp_path / "m.json", "--strategy", "entropy").code == 2


def test_ranking_must_cover_the_pool(cli, truth, tmp_path):
    cli("al-round", "init", "--images", truth, "--test-size", "2", "--initial", "2", "--out", tmp_path / "m.json")
    pool = [r["image"] for r in manifest(tmp_path / "m.json")["pool"]]
    (tmp_path / "r.jsonl").write_text(json.dumps({"image": pool[0], "rank": 1, "entropy": 0.5}) + "\n")
    run = cli("al-round", "next", tmp_path / "m.json", "--strategy", "entropy", "--ranked", tmp_path / "r.jsonl")
    assert run.code == 65 and "have no rank" in run.stderr
    assert manifest(tmp_path / "m.json")["round"] == 0  # nothing changed


def test_show_prints_a_set(cli, truth, tmp_path):
    cli("al-round", "init", "--images", truth, "--test-size", "2", "--initial", "2", "--out", tmp_path / "m.json")
    run = cli("al-round", "show", tmp_path / "m.json", "--set", "test")
    assert [r["image"] for r in run.records] == ["img02.tif", "img09.tif"]
    assert "round 0: 2 train, 2 test, 6 pool" in run.stderr


def test_init_from_a_labelled_folder_and_evaluate_against_it(cli, examples, tmp_path):
    run = cli("al-round", "init", "--images", examples, "--test-size", "1", "--initial", "1", "--seed", "1",
              "--out", tmp_path / "m.json")
    assert run.code == 0, run.stderr
    m = manifest(tmp_path / "m.json")
    assert m["counts"] == {"train": 1, "test": 1, "pool": 1}
    everything = m["train"] + m["test"] + m["pool"]
    assert sorted(r["image"].rsplit("/", 1)[1] for r in everything) == ["set20.tif", "set26.tif", "set30.tif"]
    assert all(0 < r["confluence"] < 1 and r["mask"].endswith(".tif") for r in everything)
    # The test image is the one nearest 50 % confluence, measured on its mask.
    assert m["test"][0]["confluence"] == min((r["confluence"] for r in everything), key=lambda c: abs(c - 0.5))
    # evaluate --truth takes the same folder (its masks/).
    seg = cli("segment", examples / "images", "--out", tmp_path / "p", "-q")
    (tmp_path / "pred.jsonl").write_text(seg.stdout)
    ev = cli("evaluate", tmp_path / "pred.jsonl", "--truth", examples, "-q")
    assert ev.code == 0, ev.stderr
    assert len(ev.records) == 3 and all(r["matched_by"] == "stem" for r in ev.records)
