"""Where segment's work runs: this process, a pool of local processes, or a Dask cluster.

Every executor runs the same function, :func:`run_chunk`, on the same chunks of
jobs, and the results are put back in input order here, so the records are the
same whichever executor made them. A worker builds its backend once (from a
:class:`Recipe`) and keeps it for every chunk it gets. At most ``window`` chunks
are in flight, so memory stays bounded however long the input list is.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from monolayer.backends import Backend, create_backend
from monolayer.commands.segment import Job, SegmentOptions, process_chunk
from monolayer.errors import UnavailableError, UsageError
from monolayer.signals import critical

EXECUTORS = ("local", "dask")
CONNECT_TIMEOUT_S = 10
"""How long to try reaching a Dask scheduler before giving up (exit 69)."""


@dataclass(frozen=True)
class Recipe:
    """How to build a backend anywhere: its name and constructor options (picklable)."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return repr((self.model, sorted(self.options.items())))


_BACKENDS: dict[str, tuple[Backend, threading.Lock]] = {}
_BUILDING = threading.Lock()


def worker_backend(recipe: Recipe) -> tuple[Backend, threading.Lock]:
    """This process's backend for ``recipe`` (built once, however many threads ask) and
    the lock that makes one chunk at a time use it (a Dask worker may run several
    tasks in threads; a model is not made for concurrent calls)."""
    key = recipe.key()
    with _BUILDING:
        if key not in _BACKENDS:
            _BACKENDS[key] = (create_backend(recipe.model, **recipe.options), threading.Lock())
    return _BACKENDS[key]


def run_chunk(recipe: Recipe, chunk: list[Job], options: SegmentOptions,
              model: dict[str, Any]) -> list[dict[str, Any]]:
    """The unit of remote work: segment ``chunk`` with this worker's backend."""
    backend, lock = worker_backend(recipe)
    here = backend.describe()
    if here.get("weights_sha256") != model.get("weights_sha256"):
        raise UnavailableError(f"the worker loaded weights {here.get('weights_sha256')}, not the "
                               f"{model.get('weights_sha256')} of this run",
                               "workers must see the same weights file")
    return process_chunk(chunk, backend, options, model, model_lock=lock, cancel=_orphaned)


@contextlib.contextmanager
def _main_module_not_rerun() -> Iterator[None]:
    """Start spawned workers without running this program's main script again.

    A spawned child imports the parent's ``__main__`` file (as ``__mp_main__``) before its
    first task; for the ``monolayer`` console script that is the whole CLI, about a second
    per worker. Workers run :func:`run_chunk` alone, importable by name, so they need no
    main module (``python -m monolayer`` skips it already: a package's ``__main__`` is never
    re-run). The pool starts its processes inside ``submit``, so this wraps those calls."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


_STARTING = threading.Lock()


def _worker_main(conn: Any, recipe: Recipe, parent: int) -> None:
    """A local worker process: build the backend, say so, then segment each chunk it is sent."""
    _init_local_worker(parent)
    try:
        worker_backend(recipe)
    except Exception as exc:  # noqa: BLE001 -- told to the parent, which goes on without it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("done", run_chunk(*args))
        except Exception as exc:  # noqa: BLE001 -- the chunk's error, reported by the parent
            reply = ("error", exc)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception:  # noqa: BLE001 -- an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


class _Worker:
    """One worker process and its state: starting, idle, busy (holds a chunk) or gone."""

    def __init__(self, process: Any, conn: Any) -> None:
        self.process, self.conn = process, conn
        self.state = "starting"
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None


class _LocalPool:
    """Chunks shared between this process (one thread) and worker processes started as needed.

    Each chunk waits here until this process's thread or a ready worker takes it, so a
    slow-starting or busy worker never holds work this process could do, and no worker
    is given more than one chunk at a time. A worker is started only when a chunk waits
    that nobody is about to take (this process's thread busy, every started worker busy),
    one per such chunk and at most ``max_workers``: a run whose images are all reused, or
    one with a single chunk, starts none. Closing ends at once every worker that holds no
    chunk, started or still starting (its backend half built is of no use any more)."""

    def __init__(self, recipe: Recipe | None, max_workers: int, run_here: Callable[..., list[dict[str, Any]]],
                 cancelled: threading.Event, warn: Callable[[str], None] | None) -> None:
        import concurrent.futures
        import multiprocessing

        self._recipe, self._max_workers, self._run_here = recipe, max_workers, run_here
        self._cancelled, self._warn = cancelled, warn
        self._context = multiprocessing.get_context("spawn")
        self._queue: collections.deque[tuple[Any, tuple[Any, ...]]] = collections.deque()
        self._workers: list[_Worker] = []
        self._here_free = True  # this process's thread holds no chunk
        self._no_more_workers = False  # one could not start or died: go on with those there are
        self._closing = False
        self._warned = False
        self._ready = threading.Condition()
        self._future = concurrent.futures.Future
        self._thread = threading.Thread(target=self._work_here, name="monolayer-local", daemon=True)
        self._thread.start()

    @property
    def started(self) -> int:
        """How many worker processes this pool has started."""
        return len(self._workers)

    def submit(self, recipe: Recipe | None, chunk: list[Job], options: SegmentOptions,
               model: dict[str, Any]) -> Any:
        future = self._future()
        with self._ready:
            self._queue.append((future, (recipe, chunk, options, model)))
            self._ready.notify_all()
            takers = int(self._here_free) + sum(w.state in ("starting", "idle") for w in self._workers)
            start = (len(self._queue) > takers and len(self._workers) < self._max_workers
                     and not self._no_more_workers and not self._closing)
            if start:
                self._start_worker()
        return future

    def _start_worker(self) -> None:
        """Start one worker process and the thread that feeds it (with ``_ready`` held)."""
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child_end, self._recipe, os.getpid()),
                                        name="monolayer-worker", daemon=True)
        try:
            with _STARTING, _main_module_not_rerun():
                process.start()
        except Exception as exc:  # noqa: BLE001 -- no process (out of memory, too many): go on without
            parent_end.close()
            self._no_more_workers = True
            self._say_once(f"could not start a worker process ({type(exc).__name__}: {exc})")
            return
        finally:
            child_end.close()
        worker = _Worker(process, parent_end)
        worker.thread = threading.Thread(target=self._feed, args=(worker,), name="monolayer-worker", daemon=True)
        self._workers.append(worker)
        worker.thread.start()

    def _say_once(self, what: str) -> None:
        """One warning for the run (with ``_ready`` held), not when the run is ending anyway."""
        if self._warned or self._closing or self._cancelled.is_set() or self._warn is None:
            return
        self._warned = True
        self._warn(f"{what}; the run goes on with fewer processes")

    def _receive(self, worker: _Worker) -> tuple[str, Any]:
        """The worker's next message, or ``("died", exit code)`` once it is gone."""
        from multiprocessing.connection import wait

        while True:
            if worker.conn.poll():
                try:
                    return worker.conn.recv()
                except (EOFError, OSError):
                    break
                except Exception as exc:  # noqa: BLE001 -- a reply that does not unpickle
                    return "error", RuntimeError(f"the worker's reply could not be read: {exc}")
            if worker.process.sentinel in wait([worker.conn, worker.process.sentinel]) and not worker.conn.poll():
                break
        worker.process.join(1.0)
        return "died", worker.process.exitcode

    def _gone(self, worker: _Worker, what: str) -> None:
        with self._ready:
            worker.state = "gone"
            self._no_more_workers = True
            self._say_once(what)
            self._ready.notify_all()

    def _feed(self, worker: _Worker) -> None:
        kind, value = self._receive(worker)
        if kind != "ready":
            why = value if kind == "failed" else f"it ended with exit code {value}"
            self._gone(worker, f"a worker process could not start ({why})")
            return
        worker.ready.set()
        while True:
            with self._ready:
                if worker.state == "ending":
                    return  # closing: close() ends the process
                worker.state = "idle"
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return  # closing: close() ends the process
                future, args = self._queue.popleft()
                worker.state = "busy"
            if not future.set_running_or_notify_cancel():
                continue
            try:
                worker.conn.send(args)
            except Exception as exc:  # noqa: BLE001 -- the worker is gone, or the chunk does not pickle
                if isinstance(exc, (OSError, EOFError)):
                    # Not sent, so not started: it goes back to the front of the queue.
                    retry = self._future()
                    self._relay(retry, future)
                    with self._ready:
                        self._queue.appendleft((retry, args))
                        self._ready.notify_all()
                    self._gone(worker, "a worker process ended unexpectedly")
                    return
                future.set_exception(exc)
                continue
            kind, value = self._receive(worker)
            if kind == "done":
                future.set_result(value)
            elif kind == "error":
                future.set_exception(value)
            else:
                future.set_exception(RuntimeError(f"the worker process ended (exit code {value})"))
                self._gone(worker, f"a worker process ended (exit code {value}); its images failed")
                return

    @staticmethod
    def _relay(source: Any, target: Any) -> None:
        def settle(done: Any) -> None:
            if done.cancelled():
                target.cancel() or target.set_exception(RuntimeError("the chunk was cancelled"))
            elif done.exception() is not None:
                target.set_exception(done.exception())
            else:
                target.set_result(done.result())
        source.add_done_callback(settle)

    def _work_here(self) -> None:
        while True:
            with self._ready:
                self._here_free = True
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                future, (_, chunk, options, model) = self._queue.popleft()
                self._here_free = False
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run_here(chunk, options, model))
            except BaseException as exc:  # noqa: BLE001 -- handed to whoever waits for it
                future.set_exception(exc)

    def close(self, cancel: bool) -> None:
        """Finish every queued chunk (or with ``cancel``, drop them), then end every worker.

        A worker that holds no chunk (idle, or still starting) is ended at once, never
        waited for; without ``cancel`` a worker busy with a chunk finishes it first (after
        the last result the run has none). A cancelled thread busy in one long computation
        is not waited for beyond the grace period."""
        with self._ready:
            self._closing = True
            if cancel:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._ready.notify_all()
            # With chunks still queued, an idle worker may take one: it is ended after.
            idle = [w for w in self._workers
                    if cancel or w.state == "starting" or (w.state == "idle" and not self._queue)]
            for worker in idle:
                worker.state = "ending"  # takes no chunk from now on
        _end_processes([w.process for w in idle], grace_s=CANCEL_GRACE_S)
        if not cancel:
            self._thread.join()
        else:
            self._thread.join(CANCEL_GRACE_S)
            if self._thread.is_alive():
                _ABANDONED.append(self._thread)
        for worker in self._workers:
            if worker.thread is not None:
                # A busy worker finishes its chunk (or, cancelled, is ended already).
                worker.thread.join(None if not cancel else CANCEL_GRACE_S)
        _end_processes([w.process for w in self._workers], grace_s=CANCEL_GRACE_S)
        for worker in self._workers:
            if worker.thread is None or not worker.thread.is_alive():
                worker.conn.close()


class _Orphaned:
    """``is_set()`` once the parent that started this local worker has gone: the
    worker then writes nothing more (the parent's lock on OUT is no longer held)."""

    parent: int | None = None

    def is_set(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent


_orphaned = _Orphaned()


def _init_local_worker(parent: int | None = None) -> None:
    # Ctrl-C and a terminal's hang-up go to the whole process group; the parent decides
    # what stops, and ends its workers itself (Executor.close). SIGTERM keeps its default,
    # so the pool can still end a worker it gave up on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _orphaned.parent = parent
    if parent is not None:
        _die_with_parent()
        if os.getppid() != parent:  # it died before the line above took effect
            os._exit(1)


def _die_with_parent() -> None:
    """On Linux, have the kernel send this process SIGKILL when its parent dies, however
    it dies (``kill -9`` included); elsewhere :class:`_Orphaned` stops its writes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl here: the parent-pid check before each write remains


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def check_executor(kind: str, jobs: int, scheduler: str | None) -> None:
    """Refuse executor options that do not go together (before any model is loaded)."""
    if kind not in EXECUTORS:
        raise UsageError(f"unknown executor {kind!r}", f"choose one of: {', '.join(EXECUTORS)}")
    if kind == "dask" and not scheduler:
        raise UsageError("--executor dask needs --scheduler ADDRESS (e.g. tcp://head-node:8786)")
    if kind == "local" and scheduler:
        raise UsageError("--scheduler goes with --executor dask")
    if kind == "dask" and jobs != 1:
        raise UsageError("--jobs is for --executor local; Dask's workers set the parallelism")


class Executor:
    """Submit chunks, get results back in submission order, at most ``window`` in flight."""

    def __init__(self, kind: str = "local", jobs: int = 1, scheduler: str | None = None,
                 recipe: Recipe | None = None, backend: Backend | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        """``warn`` is told (once) when a local worker could not start or died and the run
        goes on with fewer processes."""
        check_executor(kind, jobs, scheduler)
        self.kind, self.jobs, self.recipe, self.backend = kind, max(1, jobs), recipe, backend
        self._client: Any = None
        self._threads: Any = None
        self._local: _LocalPool | None = None
        self._model_lock = threading.Lock()
        # Set when the run is cancelled: the in-process I/O thread then writes no more.
        self._cancelled = threading.Event()
        if kind == "dask":
            self._client = _dask_client(scheduler or "")
            self.window = 2 * max(1, sum(self._client.nthreads().values()))
        elif self.jobs > 1:
            # Share the cores: N workers x all-cores BLAS/torch threads would thrash. Set
            # before any worker starts (they inherit it), since BLAS reads it when loaded.
            threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
            for name in THREAD_VARIABLES:
                os.environ.setdefault(name, threads)
            # This process is one of the N (it has its backend already), with up to N - 1
            # worker processes, each started only when a chunk waits that nobody is free to
            # take (so a run with little or nothing to compute starts none). spawn, not
            # fork: a forked copy of a process that has started torch's or BLAS's threads
            # can deadlock. A chunk goes to a worker only once its backend is built.
            assert backend is not None, "a local pool works in this process too: give it the backend"
            self._local = _LocalPool(recipe, self.jobs - 1, self._run_here, self._cancelled, warn)
            self.window = 2 * self.jobs
        else:
            import concurrent.futures

            # One process, two threads: while one chunk holds the model, the other reads
            # its images or writes its masks (decoders, compressors and torch release the GIL).
            self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                                  thread_name_prefix="monolayer-io")
            self.window = 2

    def _run_here(self, chunk: list[Job], options: SegmentOptions, model: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.backend is not None
        return process_chunk(chunk, self.backend, options, model, self._model_lock, cancel=self._cancelled)

    def submit(self, chunk: list[Job], options: SegmentOptions, model: dict[str, Any]) -> Any:
        if self._client is not None:
            return self._client.submit(run_chunk, self.recipe, chunk, options, model, pure=False)
        if self._local is not None:
            # Uninterrupted: a signal inside submit could leave a started worker the pool
            # does not know of yet, which close() would then not end.
            with critical():
                return self._local.submit(self.recipe, chunk, options, model)
        assert self.backend is not None and self._threads is not None
        return self._threads.submit(process_chunk, chunk, self.backend, options, model, self._model_lock,
                                    cancel=self._cancelled)

    def map_ordered(self, tasks: Iterable[tuple[Any, Callable[[], Any] | None]]) -> Iterator[tuple[Any, Any]]:
        """For each ``(tag, submit_or_None)``: yield ``(tag, result)`` in order, with at
        most ``window`` tasks taken ahead (computed or not), so memory stays bounded. A
        task whose work raised (a worker killed by the OOM killer, say) yields the
        exception as its result; the others go on."""
        pending: collections.deque[tuple[Any, Any]] = collections.deque()
        for tag, submit in tasks:
            pending.append((tag, submit() if submit is not None else None))
            while pending and (len(pending) > self.window or pending[0][1] is None):
                yield _settle(*pending.popleft())
        while pending:
            yield _settle(*pending.popleft())

    def close(self, cancel: bool = False) -> None:
        """Finish (or with ``cancel``, stop) all work. Either way no worker of this
        machine is left running or writing when it returns, so the caller may release
        the output folder's lock. Signals wait until local work has stopped; a worker
        that holds no chunk (one still starting included) is ended, not waited for."""
        with critical():
            if self._threads is not None:
                if not cancel:
                    self._threads.shutdown(wait=True)
                else:
                    # A running chunk stops before its next write once cancelled; a model stuck in
                    # one long computation is not waited for beyond the grace period (the process
                    # then ends without joining it, see abandoned_threads).
                    self._cancelled.set()
                    self._threads.shutdown(wait=False, cancel_futures=True)
                    deadline = time.monotonic() + CANCEL_GRACE_S
                    for thread in list(getattr(self._threads, "_threads", ())):
                        thread.join(max(0.0, deadline - time.monotonic()))
                        if thread.is_alive():
                            _ABANDONED.append(thread)
                self._threads = None
            if self._local is not None:
                if cancel:
                    self._cancelled.set()
                self._local.close(cancel)
                self._local = None
        if self._client is not None:  # a remote cluster: not waited for with signals held
            self._client.close()
            self._client = None


CANCEL_GRACE_S = 5.0
"""How long a cancelled run waits for the model thread's current computation."""
_ABANDONED: list[threading.Thread] = []


def abandoned_threads() -> bool:
    """Whether a cancelled run left a model thread computing (it will never write: it was
    cancelled). The process must then end without joining it: ``os._exit``."""
    return any(thread.is_alive() for thread in _ABANDONED)


def _end_processes(processes: list[Any], grace_s: float = 10.0) -> None:
    """Terminate worker processes and wait until each is gone (SIGKILL after ``grace_s``)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()


def _settle(tag: Any, future: Any) -> tuple[Any, Any]:
    if future is None:
        return tag, None
    try:
        return tag, future.result()
    except Exception as exc:  # KeyboardInterrupt and SystemExit still stop the run
        return tag, exc


def _dask_client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise UnavailableError("--executor dask needs dask's distributed package, which is not installed",
                               "pip install 'monolayer[dask]'") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise UnavailableError(f"cannot reach the Dask scheduler at {address} ({exc})",
                               "check the address and that the scheduler is running") from None


def _output_files(record: dict[str, Any], root: str) -> dict[str, list[int] | None]:
    """File name -> identity (size, mtime, inode) of each output a record names."""
    from monolayer.io.journal import file_identity

    names = [os.path.basename(record[f]) for f in ("mask", "prob", "overlay") if record.get(f)]
    return {name: file_identity(os.path.join(root, name)) for name in names}


def _key_model(model: dict[str, Any]) -> dict[str, Any]:
    """The model fields a result depends on: the weights by checksum, not by path."""
    return {k: v for k, v in model.items() if k != "weights"}


def run_segment(jobs: Iterable[Job], executor: Executor, options: SegmentOptions, model: dict[str, Any],
                chunk_size: int, journal: Any = None, skip_existing: bool = False) -> Iterator[dict[str, Any]]:
    """One record per job, in order. With a journal, each new result is appended to it;
    with ``skip_existing``, a job whose image content, model and options have a result
    in the journal (and whose mask is still there) gets that record back, marked
    ``"reused": true``, without running the model."""
    from monolayer.commands.segment import batched, error_record
    from monolayer.errors import EXIT_INTERNAL, MonolayerError
    from monolayer.io.journal import result_key

    result_options = options.result_options()
    key_model = _key_model(model)
    root = options.write_root

    def reusable(job: Job) -> dict[str, Any] | None:
        from monolayer.io.images import sha256_file

        try:
            digest = sha256_file(job.path)
        except OSError:
            return None  # unreadable now: let the worker report it
        entry = journal.get(result_key(digest, key_model, result_options))
        if entry is None:
            return None
        record = entry["record"]
        if os.path.basename(str(record.get("mask"))) != f"{job.stem}.mask.tif":
            return None  # the same content under another name: its files are another image's
        files = _output_files(record, root)
        if None in files.values() or files != entry.get("files"):
            return None  # removed or overwritten since: compute it again
        for name in ("mask", "prob", "overlay"):
            if record.get(name) and record.get(f"{name}_sha256"):
                try:
                    same = sha256_file(os.path.join(root, os.path.basename(record[name]))) == record[f"{name}_sha256"]
                except (OSError, MonolayerError):
                    same = False
                if not same:
                    return None  # its bytes changed in place: compute it again
        outputs = {f: str(options.out / os.path.basename(record[f])) for f in ("mask", "prob", "overlay")
                   if record.get(f)}
        return {**record, **outputs, "image": job.image, "reused": True}

    def tasks() -> Iterator[tuple[Any, Callable[[], Any] | None]]:
        for chunk in batched(jobs, chunk_size):
            reused: dict[int, dict[str, Any]] = {}
            todo: list[Job] = []
            for job in chunk:
                record = reusable(job) if skip_existing and job.error is None else None
                if record is not None:
                    reused[job.index] = record
                else:
                    todo.append(job)
            submit = (lambda todo=todo: executor.submit(todo, options, model)) if todo else None
            yield (chunk, reused, todo), submit

    for (chunk, reused, todo), results in executor.map_ordered(tasks()):
        if isinstance(results, Exception):
            code = results.exit_code if isinstance(results, MonolayerError) else EXIT_INTERNAL
            why = str(results) if isinstance(results, MonolayerError) else f"{type(results).__name__}: {results}"
            results = [error_record(job.image, f"{job.image}: worker failed: {why}", code, model)
                       for job in todo]
        computed = dict(zip((job.index for job in todo), results or []))
        for job in chunk:
            if job.index in reused:
                yield reused[job.index]
                continue
            record = computed[job.index]
            if journal is not None and "error" not in record:
                try:
                    journal.append(result_key(record["image_sha256"], key_model, result_options), record,
                                   _output_files(record, root))
                except MonolayerError as exc:
                    # Not journaled, so a rerun could not trust it: this image failed (a full
                    # disk, exit 74); the others go on, and --skip-existing computes it again.
                    record = error_record(job.image, f"{job.image}: {exc}", exc.exit_code, model)
            yield record
