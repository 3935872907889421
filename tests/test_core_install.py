"""A core install is honest, and the CLI imports on any platform.

Each test runs the real CLI in a fresh interpreter in which some modules cannot be
imported, as on a machine that lacks them:

* torch and the other model frameworks, as after a plain ``pip install monolayer``:
  every learned command must say what to install (exit 69), never crash (exit 70);
* the POSIX-only modules (``fcntl``, ``resource``, ``termios``, ``pwd``, ``grp``), as on
  the Windows PCs beside many microscopes: every module must still import;
* matplotlib must be imported only where a plot is drawn.

``sys.modules[name] = None`` is what hides a module: ``import name`` then fails with
ModuleNotFoundError and ``importlib.util.find_spec(name)`` returns None, which is what
both see when the package is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monolayer.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "usiigaci"
IMAGE = EXAMPLES / "images" / "set20.tif"

FRAMEWORKS = ("torch", "torchvision", "segment_anything", "cellpose")
POSIX_ONLY = ("fcntl", "resource", "termios", "pwd", "grp")
HINT = "pip install 'monolayer[models]'"
LEARNED = ("sam", "cellpose", "maskrcnn", "unet")
TRAINABLE = ("unet", "sam", "cellpose", "maskrcnn")

# Runs `monolayer ARGS...` with HIDDEN unimportable; with REPORT set, the modules of
# WATCH that were imported are written there as JSON when the command has ended.
PRELUDE = """\
import json, os, sys
for name in os.environ["HIDDEN"].split():
    sys.modules[name] = None
sys.argv[0] = "monolayer"
def report():
    if os.environ.get("REPORT"):
        watch = os.environ.get("WATCH", "").split()
        loaded = sorted(m for m in watch if sys.modules.get(m) is not None)
        with open(os.environ["REPORT"], "w") as handle:
            json.dump(loaded, handle)
"""
RUN_CLI = PRELUDE + """\
from monolayer.cli.app import main
try:
    main()
finally:
    report()
"""


def monolayer(*args: object, hidden=FRAMEWORKS, report: Path | None = None, watch=(),
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HIDDEN": " ".join(hidden), "REPORT": str(report or ""), "WATCH": " ".join(watch)}
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def assert_unavailable(run: subprocess.CompletedProcess) -> None:
    """Exit 69, nothing on stdout, one line on stderr naming what to install."""
    assert run.returncode == 69, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("monolayer: error: ") and HINT in lines[0], lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A file where a checkpoint is expected: the missing framework must be named before
    anything looks inside it."""
    path = tmp_path_factory.mktemp("w") / "x.pt"
    path.write_bytes(b"not a checkpoint")
    return path


def test_the_frameworks_are_really_hidden():
    code = PRELUDE + "import importlib.util\nassert importlib.util.find_spec('torch') is None\nimport torch\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HIDDEN": " ".join(FRAMEWORKS)})
    assert run.returncode == 1 and "ModuleNotFoundError" in run.stderr, run.stderr


def test_the_learned_models_are_the_ones_that_need_a_framework():
    # The parametrised lists below cover every backend the registry knows.
    assert sorted(n for n, spec in BACKENDS.items() if spec.requires) == sorted(LEARNED)
    assert sorted(n for n, spec in BACKENDS.items() if not spec.requires) == ["classical"]


@pytest.mark.parametrize("model", LEARNED)
def test_segment_with_a_learned_model_says_what_to_install(model, checkpoint, tmp_path):
    run = monolayer("segment", IMAGE, "-m", model, "-w", checkpoint, "-o", tmp_path / "out")
    assert_unavailable(run)


@pytest.mark.parametrize("model", TRAINABLE)
def test_train_says_what_to_install(model, checkpoint, tmp_path):
    weights = ("-w", checkpoint) if model == "sam" else ()
    run = monolayer("train", "-m", model, "--train", EXAMPLES, "--epochs", "1", "-o", tmp_path / "m.pt",
                    *weights)
    assert_unavailable(run)
    assert not (tmp_path / "m.pt").exists()


def test_cellpose_thresholds_says_what_to_install(checkpoint, tmp_path):
    run = monolayer("cellpose-thresholds", IMAGE, "-t", EXAMPLES / "masks", "-w", checkpoint,
                    "-o", tmp_path / "thr.json")
    assert_unavailable(run)
    assert not (tmp_path / "thr.json").exists()


def test_classical_segment_works_without_the_frameworks(tmp_path):
    run = monolayer("segment", IMAGE, "-o", tmp_path / "out", "-q")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    (record,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert record["model"] == "classical" and 0 < record["confluence"] < 1
    assert (tmp_path / "out" / "set20.mask.tif").is_file()


def test_models_lists_every_backend_without_the_frameworks():
    run = monolayer("models")
    assert run.returncode == 0, run.stderr
    backends = {r["name"]: r for r in map(json.loads, run.stdout.splitlines()) if r["entry"] == "backend"}
    assert set(backends) == set(BACKENDS)
    assert backends["classical"]["ready"] is True
    for name in LEARNED:
        assert backends[name]["ready"] is False and "torch" in backends[name]["missing"]


@pytest.mark.parametrize("command", [(), ("segment",), ("train",), ("cellpose-thresholds",), ("models",),
                                     ("stats",), ("evaluate",)])
def test_help_works_without_the_frameworks(command):
    run = monolayer(*command, "--help")
    assert run.returncode == 0, run.stderr
    assert "Usage: monolayer" in run.stdout and run.stderr == ""


# ---- no POSIX-only module at import time -------------------------------------------------

IMPORT_EVERYTHING = PRELUDE + """\
import importlib, pkgutil
import monolayer, monolayer.cli.app
failed = []
for info in pkgutil.walk_packages(monolayer.__path__, "monolayer."):
    if info.name == "monolayer.__main__":
        continue  # runs the CLI
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_every_module_imports_without_posix_only_modules():
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True,
                         env={**os.environ, "HIDDEN": " ".join(POSIX_ONLY)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", run.stdout


def test_the_cli_runs_without_posix_only_modules():
    run = monolayer("--help", hidden=POSIX_ONLY)
    assert run.returncode == 0, run.stderr
    assert "segment" in run.stdout


# ---- matplotlib only where a plot is drawn -----------------------------------------------

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """evaluate records of the shipped example images against their own truth."""
    folder = tmp_path_factory.mktemp("eval")
    segmented = monolayer("segment", EXAMPLES / "images", "-o", folder / "pred", "-q")
    assert segmented.returncode == 0, segmented.stderr
    (folder / "pred.jsonl").write_text(segmented.stdout)
    run = monolayer("evaluate", folder / "pred.jsonl", "--truth", EXAMPLES / "masks", "-q",
                    report=folder / "evaluate.json", watch=["matplotlib"])
    assert run.returncode == 0, run.stderr
    assert json.loads((folder / "evaluate.json").read_text()) == []
    (folder / "eval.jsonl").write_text(run.stdout)
    return folder


def test_importing_the_cli_does_not_import_matplotlib(tmp_path):
    run = monolayer("--version", hidden=(), report=tmp_path / "loaded.json", watch=["matplotlib"])
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "loaded.json").read_text()) == []


def test_evaluate_and_stats_without_plot_do_not_import_matplotlib(evaluated, tmp_path):
    # evaluate was watched in the fixture; stats here, on evaluate's records.
    run = monolayer("stats", evaluated / "eval.jsonl", "--field", "iou", hidden=(),
                    report=tmp_path / "loaded.json", watch=["matplotlib"])
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[0])["field"] == "iou"
    assert json.loads((tmp_path / "loaded.json").read_text()) == []


# ---- the output lock on Windows (msvcrt emulated with POSIX byte-range locks) ------------

# msvcrt.locking locks NBYTES from the current position, and fails at once with EACCES
# under LK_NBLCK when another process holds them; fcntl.lockf record locks behave alike.
FAKE_MSVCRT = """\
import errno, fcntl, os, types
msvcrt = types.ModuleType("msvcrt")
msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK = 0, 1, 2
def locking(fd, mode, nbytes):
    where = os.lseek(fd, 0, os.SEEK_CUR)
    if mode == msvcrt.LK_UNLCK:
        fcntl.lockf(fd, fcntl.LOCK_UN, nbytes, where)
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, where)
    except OSError:
        raise OSError(errno.EACCES, "Permission denied") from None
msvcrt.locking = locking
"""
HOLD = FAKE_MSVCRT + """\
import sys, time
from pathlib import Path
sys.modules["msvcrt"] = msvcrt
from monolayer.io import journal
journal.WINDOWS = True
with journal.output_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(out: Path, seconds: float) -> subprocess.Popen:
    """Another process holding OUT's lock the Windows way, once it has printed 'locked'."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


@pytest.fixture
def windows_lock(monkeypatch):
    """This process's output_lock takes the Windows path, on the emulated msvcrt."""
    from monolayer.io import journal

    namespace: dict = {}
    exec(FAKE_MSVCRT, namespace)
    monkeypatch.setitem(sys.modules, "msvcrt", namespace["msvcrt"])
    monkeypatch.setattr(journal, "WINDOWS", True)
    return journal


pytestmark_posix = pytest.mark.skipif(sys.platform == "win32", reason="emulates Windows on POSIX")


@pytestmark_posix
def test_the_windows_lock_refuses_names_the_holder_and_waits(windows_lock, tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out, 3)
    try:
        with pytest.raises(windows_lock.BusyError, match=rf"another monolayer run \(pid {holder.pid}\)"):
            with windows_lock.output_lock(out):
                pass
        waited_for = []
        with windows_lock.output_lock(out, wait=True, on_wait=waited_for.append):
            assert (out / ".monolayer" / "lock").read_text() == f"pid {os.getpid()}"
        assert waited_for == [f"pid {holder.pid}"]
        with windows_lock.output_lock(out):  # and released on the way out
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@pytestmark_posix
def test_the_windows_lock_is_released_when_its_holder_is_killed(windows_lock, tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out, 300)
    holder.kill()  # no finally block runs: the operating system drops the lock
    holder.wait()
    holder.stdout.close()
    with windows_lock.output_lock(out):
        assert (out / ".monolayer" / "lock").read_text() == f"pid {os.getpid()}"
