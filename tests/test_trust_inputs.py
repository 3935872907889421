"""Issue 9, class 3: every input is validated at one boundary.

Hostile JSON Lines (wrong types, missing keys, NUL bytes, deep nesting,
NaN/Infinity tokens, a BOM, padded paths, lone surrogates, objects where keys
belong), error records claiming exit 0, broken manifests and training states:
each is ``file:line: message`` and exit 65 for that item, never 70, never a
silently dropped value.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import blob_image
from monolayer.records import MAX_DEPTH, iter_jsonl, parse_line
from monolayer.schema import KINDS, check
from monolayer.errors import DataError


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Lines a hostile or careless user might hand any reader, with the words its message must hold.
BAD_LINES = [
    ('{"image": "a.tif", "mask": 5}', "field 'mask' is 5, expected a file path"),
    ('{"image": "a.tif"}', "has no 'mask' field"),
    ('{"image": "a.tif", "mask": "m\\u0000.tif"}', "NUL byte"),
    ('{"image": "a.tif", "mask": "m.tif", "confluence": NaN}', "NaN is not a JSON number"),
    ('{"image": "a.tif", "mask": "m.tif", "confluence": Infinity}', "Infinity is not a JSON number"),
    ('{"image": "a.tif", "mask": " m.tif"}', "leading or trailing whitespace"),
    ('{"image": "a.tif", "mask": "m\\udcff.tif"}', "lone surrogate"),
    ('{"image": "a.tif", "mask": "m.tif", "confluence": "30%"}', "expected a number from 0 to 1"),
    ('{"image": "a.tif", "mask": "m.tif", "image_sha256": 7}', "expected a SHA-256"),
    ('{"image": {"path": "a.tif"}, "mask": "m.tif"}', "field 'image' is an object"),
    ('{"schema": "monolayer.eval/1", "image": "a.tif", "mask": "m.tif"}', "a monolayer.eval/1 record where"),
    ('[1, 2]', "expected a JSON object"),
    ('{"image": ' * 5000 + '"x"' + '}' * 5000, "nested"),
    ('{"image": "a.tif", "mask": "m.tif", "x": ' + '[' * (MAX_DEPTH + 2) + ']' * (MAX_DEPTH + 2) + '}',
     f"nested more than {MAX_DEPTH} levels"),
    ('{"oops"', "not valid JSON"),
]


@pytest.mark.parametrize("line, words", BAD_LINES, ids=[w for _, w in BAD_LINES])
def test_evaluate_gives_each_bad_line_its_own_error_and_goes_on(cli, tmp_path, line, words):
    tifffile.imwrite(tmp_path / "good.mask.tif", np.ones((4, 4), np.uint8))
    truth = tmp_path / "truth"
    truth.mkdir()
    tifffile.imwrite(truth / "good.tif", np.ones((4, 4), np.uint8))
    good = json.dumps({"image": "good.tif", "mask": str(tmp_path / "good.mask.tif")})
    (tmp_path / "p.jsonl").write_text(f"{good}\n{line}\n")
    run = cli("evaluate", tmp_path / "p.jsonl", "--truth", truth, "-q")
    assert run.code == 1, run.stderr  # one image evaluated, one bad line: some items failed
    assert run.records[0]["iou"] == 1.0
    bad = run.records[1]
    assert bad["exit_code"] == 65 and bad["error"].startswith(f"{tmp_path / 'p.jsonl'}:2: ")
    assert words in bad["error"]
    assert f"monolayer: error: {tmp_path / 'p.jsonl'}:2: " in run.stderr
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr


def test_a_bom_and_a_non_utf8_line_are_errors_for_their_lines(cli, tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.ones((4, 4), np.uint8))
    good = json.dumps({"image": "m.tif", "mask": str(tmp_path / "m.tif")}).encode()
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"image": "\xff"}\n' + good + b"\n")
    run = cli("entropy-rank", tmp_path / "p.jsonl", "-q")
    errors = [r["error"] for r in run.records if "error" in r]
    assert any(":1: starts with a byte-order mark" in e for e in errors)
    assert any(":2: not UTF-8 text" in e for e in errors)
    # the third line has no probability map: every item failed as bad data
    assert run.code == 65 and "internal error" not in run.stderr


def test_error_records_cannot_make_a_failed_batch_exit_0(cli, tmp_path):
    for code in (0, 256, 512, "0", None, True, -1, 130):
        lines = [{"image": f"x{i}.tif", "error": "segment failed here", "exit_code": code} for i in range(2)]
        (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        rank = cli("entropy-rank", tmp_path / "p.jsonl", "-q")
        assert rank.code == 1, (code, rank.code)
        assert all(r["exit_code"] == 1 for r in rank.records)
        truth = tmp_path / "t"
        truth.mkdir(exist_ok=True)
        tifffile.imwrite(truth / "x0.tif", np.ones((2, 2), np.uint8))
        evaluate = cli("evaluate", tmp_path / "p.jsonl", "--truth", truth, "--allow-missing", "-q")
        assert evaluate.code == 1, (code, evaluate.code)
    # A documented failure code is kept.
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "x.tif", "error": "gone", "exit_code": 66}) + "\n")
    assert cli("entropy-rank", tmp_path / "p.jsonl", "-q").code == 66


def test_stats_groups_only_by_values_and_never_drops_mixed_fields(cli, tmp_path):
    lines = [{"params": {"a": 1}, "confluence": 0.5}, {"params": {"a": 2}, "confluence": 0.6}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = cli("stats", tmp_path / "a.jsonl", "--by", "params")
    assert run.code == 65 and run.stdout == ""
    assert f"{tmp_path / 'a.jsonl'}:1: --by params: field 'params' is an object" in run.stderr
    mixed = [{"model": "m", "iou": 0.5}, {"model": "m", "iou": "0.7"}, {"model": "m", "iou": 0.9}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    for extra in ([], ["--field", "iou"]):
        run = cli("stats", tmp_path / "m.jsonl", *extra)
        assert run.code == 65 and run.stdout == "", extra
        assert f"{tmp_path / 'm.jsonl'}:2: field 'iou' is '0.7'" in run.stderr
    # A string field first, a number later: the same.
    flipped = [{"iou": "high"}, {"iou": 0.5}]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flipped))
    run = cli("stats", tmp_path / "f.jsonl")
    assert run.code == 65 and ":2: field 'iou' is a number, but" in run.stderr
    # Nulls are absences, not mixtures.
    nulls = [{"iou": None}, {"iou": 0.5}, {"iou": 0.7}]
    (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in nulls))
    run = cli("stats", tmp_path / "n.jsonl", "--field", "iou")
    assert run.code == 0 and run.records[0]["n"] == 2


def test_stats_on_hostile_lines_is_one_line_and_exit_65(cli, tmp_path):
    for line, _ in BAD_LINES:
        try:
            parse_line(line, "-")
            continue  # a valid JSON object: stats reads any fields
        except DataError:
            pass
        (tmp_path / "s.jsonl").write_text('{"x": 1}\n' + line + "\n")
        run = cli("stats", tmp_path / "s.jsonl")
        assert run.code == 65, line[:40]
        assert run.stderr.startswith(f"monolayer: error: {tmp_path / 's.jsonl'}:2: "), run.stderr


def test_evaluate_tags_cannot_replace_computed_fields_and_limits_must_be_numbers(cli, tmp_path):
    for field in ("iou", "dice", "abs_confluence_error", "confluence_pred", "matched_by", "exit_code", "mask"):
        run = cli("evaluate", tmp_path / "p.jsonl", "--truth", tmp_path, "--tag", f"{field}=1")
        assert run.code == 2 and run.stdout == "" and "would overwrite a field evaluate computes" in run.stderr
    for spec in ("nan", "iou=nan", "inf", "abs_confluence_error=-inf"):
        option = "--fail-over" if "abs" in spec or spec in ("nan", "inf") else "--fail-under"
        run = cli("evaluate", tmp_path / "p.jsonl", "--truth", tmp_path, option, spec)
        assert run.code == 2 and "must be a finite number" in run.stderr, spec
    # "nan" as a tag value stays text: JSON has no NaN.
    from monolayer.cli.evaluate import parse_tag

    assert parse_tag("note=nan") == ("note", "nan") and parse_tag("round=3") == ("round", 3)


def segment_stdin(cli, tmp_path, text: str):
    return cli("segment", "-", "--out", tmp_path / "o", "-q", input=text)


def test_segment_stdin_names_each_bad_line(cli, tmp_path):
    image = tmp_path / "ok.tif"
    tifffile.imwrite(image, blob_image(seed=3))
    lines = [json.dumps({"image": str(image)}), '{"image": NaN}', '{"image": 5}',
             json.dumps({"image": f" {image}"}), '{"image": "a\\u0000b"}', '{"nope": 1}', "\ufeff" + str(image)]
    run = segment_stdin(cli, tmp_path, "\n".join(lines) + "\n")
    assert run.code == 1
    assert "confluence" in run.records[0]
    errors = [r["error"] for r in run.records[1:]]
    assert len(errors) == 6 and all(e.startswith("<stdin>:") for e in errors)
    for words in ("NaN is not a JSON number", "field 'image' is 5", "whitespace", "NUL byte",
                  "no 'image' field", "byte-order mark"):
        assert any(words in e for e in errors), words
    assert all(r["exit_code"] == 65 for r in run.records[1:])


def test_a_plain_path_line_keeps_its_spaces(cli, tmp_path):
    image = tmp_path / "well A1 .tif"
    tifffile.imwrite(image, blob_image(seed=4))
    run = segment_stdin(cli, tmp_path, f"{image}\n")
    assert run.code == 0 and run.records[0]["image"] == str(image)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores raw bytes")
def test_a_file_name_that_is_not_utf8_is_an_error_record_and_the_rest_goes_on(cli, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "good.tif", blob_image(seed=1))
    tifffile.imwrite(os.fsdecode(bytes(folder) + b"/bad\xff.tif"), blob_image(seed=2))
    run = cli("segment", folder, "--out", tmp_path / "o", "-q")
    assert run.code == 1
    bad = [r for r in run.records if "error" in r]
    assert len(bad) == 1 and bad[0]["exit_code"] == 65 and "not valid UTF-8" in bad[0]["error"]
    assert "\\xff" in bad[0]["image"]
    assert run.stdout.encode("utf-8").decode("utf-8")  # every line is valid UTF-8


def write_manifest(path: Path, **changes) -> None:
    doc = {"schema": "monolayer.al-manifest/1", "version": "0", "seed": 1, "round": 0, "source": "",
           "train": [{"image": "a.tif", "mask": "a.m.tif", "confluence": 0.5}],
           "test": [{"image": "t.tif", "mask": "t.m.tif", "confluence": 0.5}],
           "pool": [{"image": "p.tif", "mask": "p.m.tif", "confluence": 0.4},
                    {"image": "q.tif", "mask": "q.m.tif", "confluence": 0.3}],
           "history": [{"round": 0, "strategy": "random", "picked": ["a.tif"]}]}
    doc.update(changes)
    path.write_text(json.dumps(doc, indent=1))


def test_al_round_refuses_a_manifest_whose_test_image_is_also_in_the_pool(cli, tmp_path):
    m = tmp_path / "m.json"
    write_manifest(m, pool=[{"image": "p.tif", "mask": "x", "confluence": 0.4},
                            {"image": "./t.tif", "mask": "y", "confluence": 0.5}])
    before = m.read_text()
    ranked = tmp_path / "r.jsonl"
    ranked.write_text("".join(json.dumps({"rank": i, "image": n, "entropy": 1.0 / i}) + "\n"
                              for i, n in enumerate(["./t.tif", "p.tif"], start=1)))
    for args in (["next", m, "--strategy", "entropy", "--ranked", ranked], ["next", m, "--strategy", "random"],
                 ["show", m]):
        run = cli("al-round", *args)
        assert run.code == 65 and run.stdout == "", args
        assert "'t.tif' is in pool and in test" in run.stderr
    assert m.read_text() == before


@pytest.mark.parametrize("changes, words", [
    ({"seed": "1"}, "field 'seed'"),
    ({"round": -1}, "field 'round'"),
    ({"pool": {"image": "p.tif"}}, "field 'pool' is not a list"),
    ({"train": [{"image": 5}]}, "field 'image' is 5"),
    ({"test": ["t.tif"]}, "test[0] is not an object"),
    ({"history": [{"round": 0}]}, "field 'history'"),
    ({"history": [{"round": 1, "strategy": "entropy", "picked": ["t.tif"]}]}, "not in the training set"),
    ({"train": [{"image": "a.tif"}, {"image": "a.tif"}]}, "is in train and in train"),
], ids=lambda v: str(v)[:30])
def test_al_round_refuses_a_broken_manifest_with_one_line(cli, tmp_path, changes, words):
    m = tmp_path / "m.json"
    write_manifest(m, **changes)
    run = cli("al-round", "show", m)
    assert run.code == 65 and run.stdout == "" and words in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_al_round_next_validates_ranked_records(cli, tmp_path):
    m = tmp_path / "m.json"
    write_manifest(m)
    ranked = tmp_path / "r.jsonl"
    ranked.write_text(json.dumps({"rank": "1", "image": "p.tif", "entropy": 0.4}) + "\n")
    run = cli("al-round", "next", m, "--strategy", "entropy", "--ranked", ranked)
    assert run.code == 65 and f"{ranked}:1: field 'rank' is '1'" in run.stderr
    ranked.write_text(json.dumps({"rank": 1, "image": "p.tif", "entropy": "high"}) + "\n")
    run = cli("al-round", "next", m, "--strategy", "entropy", "--ranked", ranked)
    assert run.code == 65 and "field 'entropy'" in run.stderr


def test_al_round_init_keeps_a_test_image_out_of_training_whatever_its_spelling(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = [{"image": f"{n}.tif", "mask": f"{n}.m.tif", "confluence": c}
               for n, c in (("a", 0.5), ("b", 0.2), ("c", 0.3), ("d", 0.9))]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "./a.tif"}) + "\n")
    run = cli("al-round", "init", "--images", "all.jsonl", "--test", "test.jsonl", "--initial", "3",
              "-o", "m.json")
    assert run.code == 0, run.stderr
    doc = json.loads((tmp_path / "m.json").read_text())
    assert [r["image"] for r in doc["test"]] == ["a.tif"]
    assert "a.tif" not in {r["image"] for r in doc["train"] + doc["pool"]}


def test_a_corrupt_training_state_is_exit_65_not_a_crash(cli, tmp_path):
    torch = pytest.importorskip("torch")
    images = tmp_path / "set" / "images"
    masks = tmp_path / "set" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    tifffile.imwrite(images / "a.tif", blob_image(shape=(32, 32), centers=((16, 16),), radius=8))
    tifffile.imwrite(masks / "a.tif", (blob_image(shape=(32, 32), centers=((16, 16),), radius=8) > 130)
                     .astype(np.uint8))
    out = tmp_path / "u.pt"
    args = ("train", "--model", "unet", "--train", tmp_path / "set", "--epochs", "2", "-o", out,
            "--base-channels", "2", "--patch", "16", "-q")
    for state in ([1, 2], {"config": {}, "epoch": "2"}, {"config": "x", "epoch": 1, "model": {}, "optimizer": {},
                                                         "numpy_rng": {}, "log": [], "torch_rng": None}):
        out.write_bytes(b"x")
        torch.save(state, out.with_name("u.pt.state"))
        run = cli(*args)
        assert run.code == 65 and run.stdout == "", run.stderr
        assert "u.pt.state" in run.stderr and "--restart" in run.stderr


def test_every_kind_checks_its_own_fields_and_leaves_unknown_ones():
    assert check("segment", {"mask": "m.tif", "lab_note": {"any": "thing"}}, "f:1")["lab_note"] == {"any": "thing"}
    for kind in KINDS.values():
        assert kind.fields[0].name == "schema"
    with pytest.raises(DataError, match="f:3: field 'instances' is -1"):
        check("truth", {"mask": "m.tif", "instances": -1}, "f:3")
    with pytest.raises(DataError, match="not supported"):
        check("segment", {"schema": "monolayer.segment/2", "mask": "m"}, "f:1")


def test_the_reader_is_lazy_and_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": NaN}\n')
    reader = iter_jsonl(path)
    assert next(reader) == (1, {"a": 1})
    with pytest.raises(DataError, match=r"x.jsonl:3: not valid JSON \(NaN is not a JSON number\)"):
        next(reader)
    assert [type(v).__name__ for _, v in iter_jsonl(path, errors="yield")] == ["dict", "DataError"]
    with pytest.raises(DataError, match="where: a key contains a NUL byte"):
        parse_line('{"a\\u0000": 1}', "where")


# -- stats: tagged records, huge and far-out numbers, group keys ---------------------------------

HUGE = "1" + "0" * 400  # a JSON integer with 401 digits: Python reads it, float() refuses it


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def eval_lines(iou: str = "0.5", tag: str = "") -> list[str]:
    """Eval records of two strategies, two rounds, two repeats; the last one's iou is ``iou``."""
    lines = [f'{{{tag}"image": "i{rep}.tif", "strategy": "{s}", "round": {r}, "repeat": {rep}, '
             f'"iou": 0.{r}{rep}}}' for s in ("a", "b") for r in (1, 2) for rep in (1, 2)]
    lines[-1] = lines[-1].rsplit('"iou"', 1)[0] + f'"iou": {iou}}}'
    return lines


def test_stats_checks_records_tagged_with_a_monolayer_schema(cli, tmp_path):
    tagged = write_lines(tmp_path / "t.jsonl", ['{"iou": 0.5}', '{"schema": "monolayer.eval/1", "iou": 5}'])
    run = cli("stats", tagged)
    assert run.code == 65 and run.stdout == ""
    assert run.stderr == f"monolayer: error: {tagged}:2: field 'iou' is 5, expected a number from 0 to 1\n"
    newer = write_lines(tmp_path / "v.jsonl", ['{"schema": "monolayer.eval/2", "iou": 0.5}'])
    assert cli("stats", newer).code == 65
    # Untagged records and other tools' tags stay free-form.
    free = write_lines(tmp_path / "f.jsonl", ['{"iou": 5}', '{"schema": "other.eval/1", "iou": 1}'])
    run = cli("stats", free)
    assert run.code == 0 and run.records[0]["mean"] == 3.0
    bad = write_lines(tmp_path / "r.jsonl", eval_lines("5", tag='"schema": "monolayer.eval/1", '))
    good = write_lines(tmp_path / "g.jsonl", eval_lines())
    for args in (["rounds", bad, "--metric", "iou"], ["compare", good, bad, "--metric", "iou"]):
        run = cli("stats", *args)
        assert run.code == 65 and run.stdout == "", args
        assert run.stderr == f"monolayer: error: {bad}:8: field 'iou' is 5, expected a number from 0 to 1\n"


def test_stats_of_numbers_near_the_float_limit_is_exact_or_an_error_never_null(cli, tmp_path):
    big = write_lines(tmp_path / "b.jsonl", ['{"x": 1e308}'] * 3)
    run = cli("stats", big)
    assert run.code == 0 and run.stderr == ""
    [record] = run.records
    assert (record["mean"], record["std"], record["median"], record["iqr"]) == (1e308, 0.0, 1e308, 0.0)
    tiny = write_lines(tmp_path / "s.jsonl", ['{"x": 1e-200}', '{"x": 3e-200}'])
    assert cli("stats", tiny).records[0]["std"] == pytest.approx(2**0.5 * 1e-200)
    # A std beyond +-1.8e308 has no float: an error naming the field, not a null.
    apart = write_lines(tmp_path / "a.jsonl", ['{"x": 1.7e308}', '{"x": -1.7e308}'])
    run = cli("stats", apart)
    assert run.code == 65 and run.stdout == ""
    assert "field 'x': the std is beyond the floating-point range" in run.stderr
    runs = write_lines(tmp_path / "r.jsonl", [line.replace('"iou": 0.', '"iou": 1.').replace("}", "e308}")
                                              for line in eval_lines()])  # 1.11e308 ... 1.22e308: their sums overflow
    run = cli("stats", "rounds", runs, "--metric", "iou")
    assert run.code == 0 and run.stderr == ""
    assert all(r["mean"] is not None for r in run.records if r["record"] == "summary")
    high = write_lines(tmp_path / "h.jsonl", ['{"image": "a", "iou": 1e308}', '{"image": "b", "iou": 1e308}'])
    low = write_lines(tmp_path / "l.jsonl", ['{"image": "a", "iou": -1e308}', '{"image": "b", "iou": -1e308}'])
    run = cli("stats", "compare", high, high, "--metric", "iou")
    assert run.code == 0 and run.stderr == "" and run.records[0]["mean"] == 1e308
    run = cli("stats", "compare", high, low, "--metric", "iou")
    assert run.code == 65 and run.stdout == "" and "beyond the floating-point range" in run.stderr


def test_an_integer_beyond_float_range_is_exit_65_with_file_and_line(cli, tmp_path, monkeypatch):
    message = "field 'iou' is an integer beyond the floating-point range"
    plain = write_lines(tmp_path / "p.jsonl", ['{"iou": 0.5}', '{"iou": ' + HUGE + '}'])
    run = cli("stats", plain)
    assert run.code == 65 and run.stderr == f"monolayer: error: {plain}:2: {message} (+-1.8e308)\n"
    runs = write_lines(tmp_path / "r.jsonl", eval_lines(HUGE))
    good = write_lines(tmp_path / "g.jsonl", eval_lines())
    for args in (["rounds", runs, "--metric", "iou"], ["compare", good, runs, "--metric", "iou"]):
        run = cli("stats", *args)
        assert run.code == 65 and run.stdout == "", args
        assert run.stderr.startswith(f"monolayer: error: {runs}:8: {message}"), run.stderr
    # Readers that check a record's kind: evaluate and al-round init.
    truth = tmp_path / "truth"
    truth.mkdir()
    tifffile.imwrite(truth / "a.tif", np.ones((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "a.mask.tif", np.ones((4, 4), np.uint8))
    segmented = write_lines(tmp_path / "s.jsonl", [json.dumps({"image": "a.tif", "mask": "a.mask.tif"})[:-1]
                                                   + ', "confluence": ' + HUGE + "}"])
    run = cli("evaluate", segmented, "--truth", truth, "-q")
    assert run.code == 1 and "internal error" not in run.stderr
    assert run.records[0]["exit_code"] == 65 and run.records[0]["error"].startswith(f"{segmented}:1: ")
    monkeypatch.chdir(tmp_path)
    images = write_lines(tmp_path / "all.jsonl", [f'{{"image": "{n}.tif", "mask": "{n}.m.tif", "confluence": {c}}}'
                                                  for n, c in (("a", "0.5"), ("b", HUGE), ("c", "0.3"))])
    run = cli("al-round", "init", "--images", images, "--test-size", "1", "--initial", "1", "-o", "m.json")
    assert run.code == 65 and f"{images}:2: field 'confluence'" in run.stderr
    assert not (tmp_path / "m.json").exists()


def test_stats_keeps_true_1_and_1_0_in_three_groups(cli, tmp_path):
    lines = write_lines(tmp_path / "g.jsonl", ['{"g": 1, "v": 1}', '{"g": 1.0, "v": 2}', '{"g": true, "v": 3}',
                                               '{"g": 1, "v": 5}'])
    run = cli("stats", lines, "--by", "g")
    assert run.code == 0, run.stderr
    assert [(type(r["g"]).__name__, r["g"], r["n"], r["mean"]) for r in run.records] == [
        ("int", 1, 2, 3.0), ("float", 1.0, 1, 2.0), ("bool", True, 1, 3.0)]
    assert '"g":1.0,' in run.stdout and '"g":true,' in run.stdout
    # rounds: strategy true and strategy 1 are two strategies, not one.
    runs = [json.dumps({"image": f"i{rep}.tif", "strategy": s, "round": 1, "repeat": rep, "iou": v})
            for s, v in ((True, 0.9), (1, 0.1)) for rep in (1, 2)]
    run = cli("stats", "rounds", write_lines(tmp_path / "r.jsonl", runs), "--metric", "iou")
    assert run.code == 0, run.stderr
    summaries = {(type(r["strategy"]).__name__, r["mean"]) for r in run.records if r["record"] == "summary"}
    assert summaries == {("bool", 0.9), ("int", 0.1)}


def test_a_key_given_twice_is_an_error_not_the_last_value(cli, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"well":"A1","confluence":0.2,"confluence":0.9}\n')
    run = cli("stats", tmp_path / "d.jsonl", "--field", "confluence")
    assert run.code == 65 and "the key 'confluence' appears twice" in run.stderr
    run = cli("segment", "-", "-o", tmp_path / "o", input='{"image": "a.png", "image": "b.tif"}\n')
    assert run.code == 65 and "appears twice" in run.records[0]["error"]


def test_deeply_nested_json_files_outside_json_lines_are_exit_65(cli, tmp_path):
    depth = 100_000
    deep = tmp_path / "deep.json"
    deep.write_text('{"images": [], "x": ' + "[" * depth + "]" * depth + "}")
    run = cli("coco2mask", deep, "-o", tmp_path / "m")
    assert run.code == 65 and "nested too deeply" in run.stderr
    tifffile.imwrite(tmp_path / "m.tif", np.ones((4, 4), np.uint8))
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "m.tif", "mask": str(tmp_path / "m.tif")}) + "\n")
    run = cli("evaluate", tmp_path / "p.jsonl", "--truth", deep)
    assert run.code == 65 and "internal error" not in run.stderr
