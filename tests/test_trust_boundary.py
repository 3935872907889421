"""The output folder is a boundary: no write follows a link, only monolayer's own temporary
files are deleted, an uncreatable output is exit 73, and stdout failures are one line, exit 74."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import blob_image
from monolayer.commands._naming import inside
from monolayer.io.atomic import PART_MARK, is_own_partial, write_text_atomic
from monolayer.errors import OutputError

MONOLAYER = [sys.executable, "-m", "monolayer"]


def images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i:03d}.tif", blob_image(seed=i))
    return folder


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside every output folder that a planted link points at."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_text("do not touch\n")
    return path


def untouched(path: Path) -> bool:
    return path.read_text() == "do not touch\n" and not path.is_symlink()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("monolayer: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def whole_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line valid JSON


def stray_parts(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.part")]


# ---- no write follows a link -------------------------------------------------------------

@pytest.mark.parametrize("state_file", ["lock", "segment.journal"])
def test_a_planted_state_file_link_is_refused_and_its_target_is_untouched(cli, tmp_path, victim, state_file):
    folder = images(tmp_path / "in")
    out = tmp_path / "out"
    assert cli("segment", folder, "--out", out).code == 0
    link = out / ".monolayer" / state_file
    link.unlink()
    link.symlink_to(victim)
    run = cli("segment", folder, "--out", out)
    assert run.code == 74
    line = one_error_line(run.stderr)
    assert str(link) in line and "symbolic link" in line and "remove the link" in line
    assert untouched(victim) and link.is_symlink()
    assert stray_parts(out) == []


def test_a_symlinked_state_folder_is_refused_and_nothing_is_written_through_it(cli, tmp_path):
    folder = images(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / ".monolayer").symlink_to(elsewhere, target_is_directory=True)
    run = cli("segment", folder, "--out", out)
    assert run.code == 74
    line = one_error_line(run.stderr)
    assert ".monolayer" in line and "remove the link" in line
    assert list(elsewhere.iterdir()) == []
    assert run.records == []


@pytest.mark.parametrize("suffix,extra", [(".mask.tif", []), (".prob.tif", ["--save-prob"])])
def test_a_planted_output_link_is_an_error_record_for_that_image_and_the_run_goes_on(
        cli, tmp_path, victim, suffix, extra):
    folder = images(tmp_path / "in")
    out = tmp_path / "out"
    assert cli("segment", folder, "--out", out, *extra).code == 0
    link = out / f"img001{suffix}"
    link.unlink()
    link.symlink_to(victim)
    run = cli("segment", folder, "--out", out, *extra)
    assert run.code == 1  # some items failed; not 70 (internal), not the end of the run
    records = run.records
    assert [("error" in r) for r in records] == [False, True, False]
    assert records[1]["exit_code"] == 74
    assert "symbolic link" in records[1]["error"] and "remove the link" in records[1]["error"]
    assert one_error_line(run.stderr) == f"monolayer: error: {records[1]['error']}"
    assert untouched(victim) and link.is_symlink()
    assert stray_parts(out) == []
    # Remove the link as told: a rerun then completes the set.
    link.unlink()
    rerun = cli("segment", folder, "--out", out, *extra, "--skip-existing")
    assert rerun.code == 0 and [bool(r.get("reused")) for r in rerun.records] == [True, False, True]
    assert not (out / f"img001{suffix}").is_symlink()


def test_a_linked_summary_or_manifest_target_is_refused(cli, tmp_path, victim):
    link = tmp_path / "summary.json"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="remove the link"):
        write_text_atomic(link, "{}\n")
    assert untouched(victim) and link.is_symlink()
    assert stray_parts(tmp_path) == []


def test_out_itself_may_be_a_link_to_a_folder(cli, tmp_path):
    folder = images(tmp_path / "in")
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real, target_is_directory=True)
    run = cli("segment", folder, "--out", out)
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in real.glob("*.mask.tif")) == ["img000.mask.tif", "img001.mask.tif",
                                                               "img002.mask.tif"]
    again = cli("segment", folder, "--out", out, "--skip-existing")
    assert again.code == 0 and all(r.get("reused") for r in again.records)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b.tif", "../x.tif", "x\0.tif"])
def test_inside_refuses_names_that_are_not_plain_names(tmp_path, name):
    with pytest.raises(ValueError):
        inside(tmp_path, name)


def test_inside_does_not_resolve_the_name_itself(tmp_path, victim):
    (tmp_path / "a.mask.tif").symlink_to(victim)
    assert inside(tmp_path, "a.mask.tif") == tmp_path / "a.mask.tif"


# ---- only monolayer's own files are deleted ----------------------------------------------

def test_only_monolayers_own_leftovers_are_removed(cli, tmp_path, victim):
    folder = images(tmp_path / "in")
    out = tmp_path / "out"
    assert cli("segment", folder, "--out", out).code == 0
    ours = out / f".img001.mask.tif{PART_MARK}ab12cd_9.part"  # what a crashed write leaves
    ours.write_bytes(b"half a mask")
    keep = {
        "notes.part": b"mine",
        ".notes.part": b"mine too",
        ".img000.mask.tif.part": b"an older tool's",
        f".img000.mask.tif{PART_MARK}toolong123.part": b"not the pattern",
    }
    for name, data in keep.items():
        (out / name).write_bytes(data)
    linked = out / f".img002.mask.tif{PART_MARK}zz99zz99.part"
    linked.symlink_to(victim)
    run = cli("segment", folder, "--out", out, "--skip-existing")
    assert run.code == 0, run.stderr
    assert not ours.exists()
    for name, data in keep.items():
        assert (out / name).read_bytes() == data, name
    assert linked.is_symlink() and untouched(victim)


def test_temporary_names_are_unmistakable(tmp_path):
    assert is_own_partial(tmp_path, "x") is False
    (tmp_path / f".a.tif{PART_MARK}abcdefgh.part").write_bytes(b"")
    assert is_own_partial(tmp_path, f".a.tif{PART_MARK}abcdefgh.part")
    (tmp_path / "b.part").write_bytes(b"")
    assert not is_own_partial(tmp_path, "b.part")


# ---- an output that cannot be created: exit 73 -------------------------------------------

def _blocked(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("I am a file\n")
    return blocker / "sub"


def check_cantcreat(run, folder) -> None:
    assert run.code == 73, (run.code, run.stderr)
    line = one_error_line(run.stderr)
    assert line.startswith(f"monolayer: error: cannot create output folder {folder}: ")
    assert line.endswith(")")  # the hint


def test_segment_out_that_cannot_be_created_exits_73(cli, tmp_path):
    folder = images(tmp_path / "in", 1)
    out = _blocked(tmp_path)
    check_cantcreat(cli("segment", folder, "--out", out / "masks"), out / "masks")
    long_name = tmp_path / ("x" * 300)
    check_cantcreat(cli("segment", folder, "--out", long_name), long_name)


def test_a_parent_that_refuses_new_folders_exits_73(cli, tmp_path):
    folder = images(tmp_path / "in", 1)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root may write to any read-only folder; sysfs refuses new folders even to root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs a folder that refuses root")
        out = Path("/sys/monolayer-trust-test/out")
        check_cantcreat(cli("segment", folder, "--out", out), out)
        return
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        check_cantcreat(cli("segment", folder, "--out", parent / "out"), parent / "out")
    finally:
        parent.chmod(0o755)


def check_cantcreat_file(run, target) -> None:
    assert run.code == 73, (run.code, run.stderr)
    line = one_error_line(run.stderr)
    assert line == f"monolayer: error: cannot create output file {target}: File name too long (choose a shorter name)"


def test_output_file_names_too_long_exit_73_before_any_work(cli, examples, tmp_path):
    long_file = tmp_path / ("m" * 300 + ".json")
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps({"image": f"i{i}.tif", "mask": f"m{i}.tif", "confluence": i / 10}) + "\n"
                             for i in range(6)))
    check_cantcreat_file(cli("al-round", "init", "--images", truth, "--initial", "2", "--out", long_file), long_file)
    run = cli("evaluate", examples / "masks", "--truth", examples / "masks", "--summary", long_file, "-q")
    check_cantcreat_file(run, long_file)
    coco_truth = tmp_path / "coco.jsonl"
    coco_truth.write_text(cli("coco2mask", examples / "annotations.json", "--images", examples / "images",
                              "--out", tmp_path / "t").stdout)
    long_pt = tmp_path / ("c" * 300 + ".pt")
    run = cli("train", "--model", "unet", "--train", coco_truth, "--epochs", "1", "--out", long_pt,
              "--resize", "64", "--base-channels", "2", "--patch", "32", "--device", "cpu")
    check_cantcreat_file(run, long_pt)
    assert run.stdout == ""  # refused before the first epoch


def test_coco2mask_out_under_a_file_exits_73(cli, examples, tmp_path):
    out = _blocked(tmp_path)
    check_cantcreat(cli("coco2mask", examples / "annotations.json", "--out", out), out)


def test_train_checkpoint_under_a_file_exits_73(cli, examples, tmp_path):
    truth = tmp_path / "truth.jsonl"
    truth.write_text(cli("coco2mask", examples / "annotations.json", "--images", examples / "images",
                         "--out", tmp_path / "t").stdout)
    out = _blocked(tmp_path)
    run = cli("train", "--model", "unet", "--train", truth, "--epochs", "1", "--out", out / "m.pt",
              "--resize", "64", "--base-channels", "2", "--patch", "32", "--device", "cpu")
    check_cantcreat(run, out)


def test_al_round_manifest_under_a_file_exits_73(cli, tmp_path):
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps({"image": f"i{i}.tif", "mask": f"m{i}.tif", "confluence": i / 10}) + "\n"
                             for i in range(6)))
    out = _blocked(tmp_path)
    check_cantcreat(cli("al-round", "init", "--images", truth, "--initial", "2", "--out", out / "m.json"), out)


def test_evaluate_summary_and_stats_plot_under_a_file_exit_73(cli, examples, tmp_path):
    out = _blocked(tmp_path)
    run = cli("evaluate", examples / "masks", "--truth", examples / "masks", "--summary", out / "s.json", "-q")
    check_cantcreat(run, out)
    rows = tmp_path / "a.jsonl"
    rows.write_text("".join(json.dumps({"image": str(i), "abs_confluence_error": v}) + "\n"
                            for i, v in enumerate([0.01, 0.02, 0.03])))
    check_cantcreat(cli("stats", "compare", rows, rows, "--plot", out / "c.png"), out)


# ---- a full disk while journaling --------------------------------------------------------

def test_a_full_disk_while_journaling_is_an_error_record_and_the_run_goes_on(cli, tmp_path, monkeypatch):
    from monolayer.io.journal import Journal

    folder = images(tmp_path / "in")
    real = Journal.append

    def full(self, key, record, files=None):
        if "img001" in record["image"]:
            raise OutputError(f"cannot append to {self.path}: No space left on device", "check free disk space")
        return real(self, key, record, files)

    monkeypatch.setattr(Journal, "append", full)
    run = cli("segment", folder, "--out", tmp_path / "out")
    assert run.code == 1
    assert [("error" in r) for r in run.records] == [False, True, False]
    assert run.records[1]["exit_code"] == 74 and "No space left" in run.records[1]["error"]
    monkeypatch.setattr(Journal, "append", real)
    retry = cli("segment", folder, "--out", tmp_path / "out", "--skip-existing")
    assert retry.code == 0 and [bool(r.get("reused")) for r in retry.records] == [True, False, True]


# ---- stdout: full, closed, any locale (real processes) -----------------------------------

def shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def cmd(*args: object) -> str:
    import shlex

    return " ".join(shlex.quote(str(a)) for a in (*MONOLAYER, *args))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_on_a_full_device_exits_74_with_one_line(tmp_path, examples):
    folder = images(tmp_path / "in")
    run = shell(cmd("segment", folder, "--out", tmp_path / "out", "-q") + " > /dev/full", tmp_path)
    assert run.returncode == 74, run.stderr
    assert one_error_line(run.stderr).startswith("monolayer: error: cannot write to stdout: No space left")
    assert run.stderr.count("\n") == 1
    assert stray_parts(tmp_path / "out") == []
    other = shell(cmd("coco2mask", examples / "annotations.json", "--out", tmp_path / "t", "-q") + " > /dev/full",
                  tmp_path)
    assert other.returncode == 74 and "cannot write to stdout" in one_error_line(other.stderr)
    version = shell(cmd("--version") + " > /dev/full", tmp_path)
    assert version.returncode == 74 and "cannot write to stdout" in one_error_line(version.stderr)


def test_a_closed_stdout_exits_74_before_any_work(tmp_path):
    folder = images(tmp_path / "in")
    run = shell(cmd("segment", folder, "--out", tmp_path / "out") + " >&-", tmp_path)
    assert run.returncode == 74, run.stderr
    assert "stdout is closed" in one_error_line(run.stderr)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_records_are_utf8_whatever_the_locale(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "zellen-größe-細胞.tif", blob_image())
    run = subprocess.run([*MONOLAYER, "segment", str(folder), "--out", str(tmp_path / "out"), "-q"],
                         capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"})
    assert run.returncode == 0, run.stderr
    records = whole_records(run.stdout.decode("utf-8"))
    assert records[0]["image"].endswith("zellen-größe-細胞.tif")
    assert np.isfinite(records[0]["confluence"])
