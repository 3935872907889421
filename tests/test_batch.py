"""Nightly-cron grade segment: resume after kill -9, the output lock, shards, executors, failures."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import blob_image
from monolayer.io.journal import Journal


def make_folder(folder: Path, n: int, shape=(384, 384)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        centers = [tuple(int(v) for v in rng.integers(30, shape[0] - 30, 2)) for _ in range(1 + i % 5)]
        tifffile.imwrite(folder / f"img{i:03d}.tif", blob_image(shape=shape, centers=centers, seed=i))
    return folder


def comparable(record: dict) -> dict:
    """A record without what legitimately differs between runs: timing, the reuse mark,
    and the output folder part of the mask path."""
    out = {k: v for k, v in record.items() if k not in ("seconds", "reused")}
    for key in ("mask", "prob"):
        if out.get(key):
            out[key] = Path(out[key]).name
    return out


def segment_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "monolayer", "segment", *args]


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    # Big enough that a run takes a few seconds: there is time to kill it or to start
    # a second one while it works.
    return make_folder(tmp_path_factory.mktemp("batch") / "images", 40, shape=(640, 640))


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ref")
    run = subprocess.run(segment_cmd(str(images), "--out", str(out / "masks"), "-q"), capture_output=True,
                         text=True, check=True)
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 40
    return {r["image"]: r for r in records}


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_gives_each_image_once(images, reference, tmp_path):
    out = tmp_path / "masks"
    pred = tmp_path / "pred.jsonl"
    rng = random.Random(20261125)
    journal = out / ".monolayer" / "segment.journal"
    # Kill points: once at a random instant of start-up, then after random numbers of
    # finished images (the journal has a line per finished image), anywhere in the run.
    points = [None, *sorted(rng.sample(range(1, 39), 4))]
    killed = 0
    for done in points:
        with open(pred, "w") as handle:
            proc = subprocess.Popen(segment_cmd(str(images), "--out", str(out), "--skip-existing", "-q"),
                                    stdout=handle, stderr=subprocess.DEVNULL)
            if done is None:
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                while proc.poll() is None and (
                        not journal.exists() or journal.read_bytes().count(b"\n") < done):
                    time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
        partial = [json.loads(line) for line in pred.read_text().splitlines() if line.endswith("}")]
        assert len({r["image"] for r in partial}) == len(partial)  # never a duplicate, even when killed
    assert killed >= 3, "the runs finished before they could be killed; the test proves nothing"
    with open(pred, "w") as handle:  # the same command and redirect, once more
        subprocess.run(segment_cmd(str(images), "--out", str(out), "--skip-existing", "-q"), stdout=handle,
                       check=True)
    records = read_records(pred)
    assert sorted(r["image"] for r in records) == sorted(reference)
    assert any(r.get("reused") for r in records)
    for record in records:
        assert comparable(record) == comparable(reference[record["image"]])
        mask = tifffile.imread(record["mask"])
        assert np.array_equal(mask, tifffile.imread(reference[record["image"]]["mask"]))
    assert not list(out.glob(".*.part")), "a half-written file was left behind"


def test_journal_ignores_a_torn_last_line_and_appends_on_a_fresh_one(tmp_path):
    journal = Journal(tmp_path, "segment")
    journal.append("a" * 64, {"image": "x.tif", "confluence": 0.5})
    journal.close()
    with open(journal.path, "ab") as handle:
        handle.write(b'{"key": "' + b"b" * 64 + b'", "record": {"ima')  # a crash mid-write
    again = Journal(tmp_path, "segment")
    assert len(again) == 1 and again.get("a" * 64)["record"] == {"image": "x.tif", "confluence": 0.5}
    assert again.get("b" * 64) is None
    again.append("c" * 64, {"image": "y.tif"})
    again.close()
    third = Journal(tmp_path, "segment")
    assert third.get("c" * 64)["record"] == {"image": "y.tif"} and len(third) == 2


def test_skip_existing_is_keyed_on_content_model_and_parameters(cli, tmp_path):
    folder = make_folder(tmp_path / "in", 3, shape=(96, 128))
    out = tmp_path / "out"
    first = cli("segment", folder, "--out", out, "--skip-existing")
    assert first.code == 0 and not any(r.get("reused") for r in first.records)
    again = cli("segment", folder, "--out", out, "--skip-existing")
    assert [r.get("reused") for r in again.records] == [True] * 3
    assert "3 reused" in again.stderr
    # Same name, new content: computed again. Other parameters: computed again.
    tifffile.imwrite(folder / "img001.tif", blob_image(shape=(96, 128), centers=((20, 20),), seed=99))
    changed = cli("segment", folder, "--out", out, "--skip-existing")
    assert [bool(r.get("reused")) for r in changed.records] == [True, False, True]
    # Other parameters into the same folder: refused, since the phase records already
    # printed would otherwise name canny's masks.
    canny = cli("segment", folder, "--out", out, "--skip-existing", "--method", "canny")
    assert canny.code == 2 and canny.stdout == "" and "--overwrite" in canny.stderr
    canny = cli("segment", folder, "--out", out, "--skip-existing", "--method", "canny", "--overwrite")
    assert canny.code == 0 and not any(r.get("reused") for r in canny.records)
    # --overwrite deleted the phase run's files and journal: its results are computed again.
    redo = cli("segment", folder, "--out", out, "--skip-existing", "--overwrite")
    assert [bool(r.get("reused")) for r in redo.records] == [False, False, False]
    # A removed mask is recomputed rather than pointed at.
    (out / "img000.mask.tif").unlink()
    redo = cli("segment", folder, "--out", out, "--skip-existing")
    assert [bool(r.get("reused")) for r in redo.records] == [False, True, True]
    assert (out / "img000.mask.tif").exists()
    # Another image with the same stem, segmented into the same folder from elsewhere,
    # replaces img000.mask.tif: the journaled result no longer owns that file.
    other = make_folder(tmp_path / "other", 1, shape=(96, 128))
    tifffile.imwrite(other / "img000.tif", blob_image(shape=(96, 128), centers=((50, 60),), seed=5))
    assert cli("segment", other, "--out", out).code == 0
    back = cli("segment", folder, "--out", out, "--skip-existing")
    assert [bool(r.get("reused")) for r in back.records] == [False, True, True]
    # The same content moved to another folder under its name is the same result...
    moved = tmp_path / "archive"
    moved.mkdir()
    (folder / "img002.tif").rename(moved / "img002.tif")
    again = cli("segment", folder, moved, "--out", out, "--skip-existing")
    assert [(Path(r["image"]).name, bool(r.get("reused"))) for r in again.records][-1] == ("img002.tif", True)
    # ...but under another name it is computed again: a reused record must name its own
    # image's mask, never another image's file that merely holds the same pixels.
    (moved / "img002.tif").rename(moved / "renamed.tif")
    renamed = cli("segment", folder, moved, "--out", out, "--skip-existing")
    last = renamed.records[-1]
    assert (Path(last["image"]).name, bool(last.get("reused"))) == ("renamed.tif", False)
    assert Path(last["mask"]).name == "renamed.mask.tif"


def test_second_run_on_the_same_output_exits_75_or_waits(images, tmp_path):
    out = tmp_path / "masks"
    first = subprocess.Popen(segment_cmd(str(images), "--out", str(out), "-q"), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    lock = out / ".monolayer" / "lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.05)
    second = subprocess.run(segment_cmd(str(images), "--out", str(out)), capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second started"
    assert second.returncode == 75
    assert second.stdout == ""
    assert "another monolayer run" in second.stderr and "--wait" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    waiting = subprocess.run(segment_cmd(str(images), "--out", str(out), "--wait", "--skip-existing"),
                             capture_output=True, text=True)
    stdout, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and waiting.returncode == 0
    assert "waiting" in waiting.stderr
    first_records = [json.loads(line) for line in stdout.splitlines()]
    waited = [json.loads(line) for line in waiting.stdout.splitlines()]
    assert len(first_records) == len(waited) == 40
    assert all(r.get("reused") for r in waited)  # it queued behind the first and reused its work
    assert [comparable(r) for r in waited] == [comparable(r) for r in first_records]


def test_shards_cover_every_image_exactly_once(cli, images, reference, tmp_path):
    seen = []
    for i in (1, 2, 3):
        run = cli("segment", images, "--out", tmp_path / "masks", "--shard", f"{i}/3", "-q")
        assert run.code == 0, run.stderr
        assert 0 < len(run.records) < 40
        seen.extend(run.records)
    assert sorted(r["image"] for r in seen) == sorted(reference)
    for record in seen:
        assert comparable(record) == comparable(reference[record["image"]])
    # The split is the same whatever order the list comes in, and bad specs are usage errors.
    reordered = cli("segment", *sorted((str(p) for p in images.iterdir()), reverse=True),
                    "--out", tmp_path / "again", "--shard", "2/3", "-q")
    assert sorted(r["image"] for r in reordered.records) == sorted(
        r["image"] for r in cli("segment", images, "--out", tmp_path / "x", "--shard", "2/3", "-q").records)
    for bad in ("0/3", "4/3", "a/b", "3"):
        assert cli("segment", images, "--out", tmp_path / "y", "--shard", bad).code == 2


def test_two_local_worker_processes_give_the_same_records(cli, images, reference, tmp_path):
    run = cli("segment", images, "--out", tmp_path / "masks", "--jobs", "2", "-q")
    assert run.code == 0, run.stderr
    assert [r["image"] for r in run.records] == list(reference)  # input order kept
    assert [comparable(r) for r in run.records] == [comparable(r) for r in reference.values()]


@pytest.mark.filterwarnings("ignore")
def test_dask_local_cluster_gives_the_same_records(cli, images, reference, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster:
        run = cli("segment", images, "--out", tmp_path / "masks", "--executor", "dask",
                  "--scheduler", cluster.scheduler_address, "-q")
    assert run.code == 0, run.stderr
    assert [comparable(r) for r in run.records] == [comparable(r) for r in reference.values()]
    assert cli("segment", images, "--out", tmp_path / "m", "--executor", "dask").code == 2


@pytest.mark.filterwarnings("ignore")
def test_unreachable_dask_scheduler_is_a_clear_error(cli, images, tmp_path, monkeypatch):
    import monolayer.executors

    monkeypatch.setattr(monolayer.executors, "CONNECT_TIMEOUT_S", 1)
    unreachable = cli("segment", images, "--out", tmp_path / "m", "--executor", "dask",
                      "--scheduler", "tcp://127.0.0.1:9")
    assert unreachable.code == 69 and "scheduler" in unreachable.stderr
    assert unreachable.stdout == ""


def test_fail_fast_stops_at_the_first_failure(cli, tmp_path):
    folder = make_folder(tmp_path / "in", 3, shape=(96, 128))
    (folder / "img000.tif").write_bytes(b"")  # sorts first
    run = cli("segment", folder, "--out", tmp_path / "out", "--fail-fast")
    assert run.code == 65
    assert len(run.records) == 1 and "error" in run.records[0]
    assert "--fail-fast" in run.stderr
    go_on = cli("segment", folder, "--out", tmp_path / "out")
    assert go_on.code == 1 and [("error" in r) for r in go_on.records] == [True, False, False]


def test_a_full_disk_is_an_error_record_and_the_rest_goes_on(cli, tmp_path, monkeypatch):
    import monolayer.commands.segment as seg

    folder = make_folder(tmp_path / "in", 3, shape=(96, 128))
    real = seg.write_binary_mask

    def full(target, mask):
        if "img001" in str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, mask)

    monkeypatch.setattr(seg, "write_binary_mask", full)
    run = cli("segment", folder, "--out", tmp_path / "out", "--skip-existing")
    assert run.code == 1
    assert run.records[1]["exit_code"] == 74 and "No space left" in run.records[1]["error"]
    assert "error" not in run.records[0] and "error" not in run.records[2]
    monkeypatch.setattr(seg, "write_binary_mask", real)
    retry = cli("segment", folder, "--out", tmp_path / "out", "--skip-existing")
    assert retry.code == 0 and [bool(r.get("reused")) for r in retry.records] == [True, False, True]


@pytest.mark.slow
def test_ctrl_c_exits_130_and_keeps_every_finished_record(images, tmp_path):
    out = tmp_path / "masks"
    proc = subprocess.Popen(segment_cmd(str(images), "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    journal = out / ".monolayer" / "segment.journal"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.exists() and journal.stat().st_size > 0):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    records = [json.loads(line) for line in stdout.splitlines()]  # every line whole
    assert 0 < len(records) < 40
    assert all(Path(r["mask"]).exists() for r in records)


def test_ordered_map_takes_a_bounded_number_of_tasks_ahead_and_isolates_failures():
    from monolayer.executors import Executor

    class Later:
        def __init__(self, value):
            self.value = value

        def result(self):
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    executor = Executor("local", jobs=1)
    executor.window = 3
    taken = []

    def tasks():
        for i in range(1000):
            taken.append(i)
            # a computed task, then many whose results are already known (reused)
            yield i, ((lambda i=i: Later(RuntimeError("worker died") if i == 2 else i)) if i % 10 == 0 or i == 2
                      else None)

    results = executor.map_ordered(tasks())
    executor.close()
    first = next(results)
    assert first == (0, 0) and len(taken) <= 5
    rest = list(results)
    assert [tag for tag, _ in rest] == list(range(1, 1000))
    assert isinstance(rest[1][1], RuntimeError) and rest[9][1] == 10


def test_local_workers_do_not_run_the_main_script_again(tmp_path):
    """A spawned worker imports the parent's main script unless told not to; for the
    ``monolayer`` console script that is the whole CLI (about a second per worker)."""
    marker = tmp_path / "rerun"
    script = tmp_path / "main_script.py"
    script.write_text(
        "import os\n"
        "from pathlib import Path\n"
        "if __name__ != '__main__':\n"
        f"    Path({str(marker)!r}).write_text(__name__)\n"
        "else:\n"
        "    from monolayer.backends import create_backend\n"
        "    from monolayer.executors import Executor, Recipe\n"
        "    pool = Executor('local', jobs=2, recipe=Recipe('classical'), backend=create_backend('classical'))\n"
        "    with pool._local._ready:\n"
        "        pool._local._start_worker()\n"
        "    worker = pool._local._workers[0]\n"
        "    assert worker.ready.wait(120), 'the worker did not start'\n"
        "    pool.close()\n"
        "    print(worker.process.pid != os.getpid(), worker.process.is_alive())\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True False"  # a worker of its own, ended by close()
    assert not marker.exists(), "a worker ran the main script again"


def test_workers_start_only_for_chunks_this_process_is_not_about_to_take(cli, tmp_path, monkeypatch):
    """A run whose images are all reused, or a run of one image, starts no worker process
    (and so loads no model copy and waits for none); a batch starts them as chunks wait."""
    from monolayer.executors import _LocalPool

    started = []
    original = _LocalPool._start_worker

    def counted(self):
        started.append(1)
        return original(self)

    monkeypatch.setattr(_LocalPool, "_start_worker", counted)
    folder = make_folder(tmp_path / "images", 6, shape=(128, 128))
    first = cli("segment", folder, "--out", tmp_path / "out", "--jobs", "3", "-q")
    assert first.code == 0, first.stderr
    assert len(started) <= 2  # never more than --jobs minus one (how many: see the next test)
    started.clear()
    again = cli("segment", folder, "--out", tmp_path / "out", "--jobs", "3", "--skip-existing", "-q")
    assert again.code == 0, again.stderr
    assert [r.get("reused") for r in again.records] == [True] * 6
    assert started == []
    one = cli("segment", folder / "img000.tif", "--out", tmp_path / "one", "--jobs", "4", "-q")
    assert one.code == 0 and len(one.records) == 1 and "error" not in one.records[0], one.stderr
    assert started == []


def test_a_worker_is_started_for_each_chunk_nobody_is_free_to_take():
    import queue
    import threading

    from monolayer.executors import Recipe, _LocalPool

    took, release = queue.Queue(), threading.Event()

    def run_here(chunk, options, model):
        took.put(chunk)
        release.wait(120)
        return ["here"]

    pool = _LocalPool(Recipe("classical"), 2, run_here, threading.Event(), None)
    try:
        first = pool.submit(None, [], None, {})
        assert took.get(timeout=60) == [] and pool.started == 0  # this process took it
        futures = [pool.submit(None, [], None, {})]
        assert pool.started == 1  # nobody free: one worker (it is starting)
        futures.append(pool.submit(None, [], None, {}))
        assert pool.started == 2  # the starting one will take one chunk, not two
        futures.append(pool.submit(None, [], None, {}))
        assert pool.started == 2  # at most max_workers
        release.set()
        assert first.result(timeout=120) == ["here"]
        assert all(f.result(timeout=300) in ([], ["here"]) for f in futures)
    finally:
        release.set()
        pool.close(cancel=False)
    assert not [w for w in pool._workers if w.process.is_alive()]


SLOW_START = """
import dataclasses, multiprocessing, os, time
from pathlib import Path

import monolayer.executors
from monolayer.backends import BACKENDS
from monolayer.backends.classical import ClassicalBackend

MARKER = os.environ["SLOW_START_MARKER"]


class SlowClassical(ClassicalBackend):
    \"\"\"The classical method, but a worker process takes forever to build it; with
    SLOW_START_PARENT set, each image also takes a while in the parent.\"\"\"

    def __init__(self, **options):
        if multiprocessing.parent_process() is not None:
            Path(MARKER).write_text(str(os.getpid()))
            if os.environ.get("SLOW_START_FAIL"):
                raise RuntimeError("no model here")
            time.sleep(600)
        super().__init__(**options)

    def predict(self, image):
        if os.environ.get("SLOW_START_FAIL"):  # still at work when the worker fails
            deadline = time.monotonic() + 120
            while not Path(MARKER).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(float(os.environ.get("SLOW_START_PARENT", "0")))
        return super().predict(image)


@dataclasses.dataclass(frozen=True)
class SlowRecipe(monolayer.executors.Recipe):
    \"\"\"A worker unpickling its recipe imports this module, so it knows the backend too.\"\"\"


BACKENDS["slow"] = dataclasses.replace(BACKENDS["classical"], name="slow", target=f"{__name__}:SlowClassical")
monolayer.executors.Recipe = SlowRecipe  # before the CLI imports it
"""


def run_slow_start(tmp_path: Path, n: int, parent_seconds: float, *args: str,
                   fail: bool = False) -> tuple[subprocess.Popen, Path]:
    """``monolayer segment`` of ``n`` images with the slow-starting backend (workers never
    finish building it, or with ``fail`` cannot), records to a file."""
    (tmp_path / "slow_start.py").write_text(SLOW_START)
    folder = make_folder(tmp_path / "images", n, shape=(128, 128))
    marker, records = tmp_path / "worker.pid", tmp_path / "records.jsonl"
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import slow_start\n"
            "from monolayer.cli.app import main\n"
            f"sys.argv = ['monolayer', 'segment', {str(folder)!r}, '--out', {str(tmp_path / 'out')!r}, "
            f"'--model', 'slow', '-q', *{list(args)!r}]\n"
            "main()\n")
    env = {**os.environ, "SLOW_START_MARKER": str(marker), "SLOW_START_PARENT": str(parent_seconds),
           "SLOW_START_FAIL": "1" if fail else ""}
    with open(records, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=handle, stderr=subprocess.PIPE,
                                text=True, env=env)
    return proc, marker


def gone(pid: int) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        process = psutil.Process(pid)
        process.wait(timeout=30)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    return True


def test_the_end_of_a_run_does_not_wait_for_a_worker_still_starting(tmp_path):
    """The worker started for the second chunk is still building its backend (for ten
    minutes) when this process has done every image: it is ended, not waited for, and
    ending it is no failure worth a warning."""
    proc, marker = run_slow_start(tmp_path, 4, 0.0, "--jobs", "2")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stderr == ""
    records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 4 and not [r for r in records if "error" in r]
    if marker.exists():  # the worker got as far as its backend before it was ended
        assert gone(int(marker.read_text()))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sigterm_is_honoured_while_a_worker_is_starting(tmp_path):
    proc, marker = run_slow_start(tmp_path, 200, 0.2, "--jobs", "2")
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "no worker started"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.splitlines()[-1] == ("monolayer: error: terminated by SIGTERM; "
                                       "records written so far are complete")
    assert gone(int(marker.read_text()))
    assert len(read_records(tmp_path / "records.jsonl")) < 200


def test_a_worker_that_cannot_start_is_one_warning_and_the_run_goes_on(tmp_path):
    """Workers that fail to build their backend leave the run to the processes there are,
    with every image done, and one line on stderr says so."""
    proc, marker = run_slow_start(tmp_path, 30, 0.1, "--jobs", "3", fail=True)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert marker.exists()
    records = read_records(tmp_path / "records.jsonl")
    assert len(records) == 30 and not [r for r in records if "error" in r]
    assert stderr.splitlines() == ["monolayer: warning: a worker process could not start (RuntimeError: no model "
                                   "here); the run goes on with fewer processes"], stderr
