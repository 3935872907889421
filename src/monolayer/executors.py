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


def _warm_up(recipe: Recipe) -> int:
    """A new worker's first task: build its backend now, not with its first chunk."""
    worker_backend(recipe)
    return os.getpid()


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


class _SharedQueue:
    """Chunks shared between this process (one thread) and the worker processes.

    Each chunk waits here until this process's thread or a ready worker takes it, so a
    slow-starting or busy worker never holds work this process could do, and no worker
    is given more than one chunk at a time."""

    def __init__(self, pool: Any, run_here: Callable[..., list[dict[str, Any]]], cancelled: threading.Event) -> None:
        import concurrent.futures

        self._pool, self._run_here, self._cancelled = pool, run_here, cancelled
        self._queue: collections.deque[tuple[Any, tuple[Any, ...]]] = collections.deque()
        self._ready_workers = 0
        self._pool_broken = False
        self._closing = False
        self._ready = threading.Condition()
        self._future = concurrent.futures.Future
        self._thread = threading.Thread(target=self._work_here, name="monolayer-local", daemon=True)
        self._thread.start()

    def add_worker(self, warm_up: Any) -> None:
        warm_up.add_done_callback(self._worker_free)

    def submit(self, recipe: Recipe | None, chunk: list[Job], options: SegmentOptions,
               model: dict[str, Any]) -> Any:
        future = self._future()
        with self._ready:
            self._queue.append((future, (recipe, chunk, options, model)))
            self._ready.notify_all()
        self._feed_workers()
        return future

    def _worker_free(self, done: Any) -> None:
        with self._ready:
            if done.cancelled() or done.exception() is not None:
                # A worker that cannot start (or died) takes no more chunks: this process
                # does them. The chunk it held, if any, already has its error.
                self._pool_broken = True
            else:
                self._ready_workers += 1
        self._feed_workers()

    def _feed_workers(self) -> None:
        # The pool is called with this queue's lock released: the pool's own thread calls
        # back into this queue (_settled) and may hold its locks meanwhile.
        while True:
            with self._ready:
                if not (self._queue and self._ready_workers > 0 and not self._pool_broken
                        and not self._cancelled.is_set()):
                    return
                future, args = self._queue.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                self._ready_workers -= 1
            try:
                remote = self._pool.submit(run_chunk, *args)
            except Exception as exc:  # the pool broke (a worker was killed) or was shut down
                with self._ready:
                    self._pool_broken = True
                future.set_exception(exc)
                continue
            remote.add_done_callback(lambda remote, future=future: self._settled(remote, future))

    def _settled(self, remote: Any, future: Any) -> None:
        if remote.cancelled():
            future.cancel() or future.set_exception(RuntimeError("the worker's task was cancelled"))
        elif remote.exception() is not None:
            future.set_exception(remote.exception())
        else:
            future.set_result(remote.result())
        self._worker_free(remote)

    def _work_here(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                future, (_, chunk, options, model) = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run_here(chunk, options, model))
            except BaseException as exc:  # noqa: BLE001 -- handed to whoever waits for it
                future.set_exception(exc)

    def close(self, cancel: bool) -> None:
        """Finish every queued chunk (or with ``cancel``, drop them) and end the thread; a
        cancelled thread busy in one long computation is not waited for beyond the grace period."""
        with self._ready:
            self._closing = True
            if cancel:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._ready.notify_all()
        if not cancel:
            self._thread.join()
            return
        self._thread.join(CANCEL_GRACE_S)
        if self._thread.is_alive():
            _ABANDONED.append(self._thread)


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
                 recipe: Recipe | None = None, backend: Backend | None = None) -> None:
        check_executor(kind, jobs, scheduler)
        self.kind, self.jobs, self.recipe, self.backend = kind, max(1, jobs), recipe, backend
        self._pool: Any = None
        self._client: Any = None
        self._threads: Any = None
        self._shared: _SharedQueue | None = None
        self._model_lock = threading.Lock()
        # Set when the run is cancelled: the in-process I/O thread then writes no more.
        self._cancelled = threading.Event()
        if kind == "dask":
            self._client = _dask_client(scheduler or "")
            self.window = 2 * max(1, sum(self._client.nthreads().values()))
        elif self.jobs > 1:
            import concurrent.futures
            import multiprocessing

            # Share the cores: N workers x all-cores BLAS/torch threads would thrash. Set
            # before the workers start (they inherit it), since BLAS reads it when loaded.
            threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
            for name in THREAD_VARIABLES:
                os.environ.setdefault(name, threads)
            # This process is one of the N (it has its backend already), so N - 1 worker
            # processes. spawn, not fork: a forked copy of a process that has started torch's
            # or BLAS's threads can deadlock. They are started now, each building its backend
            # at once, so their start-up overlaps this process's own work instead of delaying
            # the first chunks; a chunk goes to a worker only once it is ready.
            assert backend is not None, "a local pool works in this process too: give it the backend"
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.jobs - 1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_local_worker, initargs=(os.getpid(),))
            self._shared = _SharedQueue(self._pool, self._run_here, self._cancelled)
            with critical(), _main_module_not_rerun():
                for _ in range(self.jobs - 1):
                    self._shared.add_worker(self._pool.submit(_warm_up, recipe))
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
        if self._shared is not None:
            # Uninterrupted: a signal inside submit could leave a started worker the pool
            # does not know of yet, which close() would then not end.
            with critical():
                return self._shared.submit(self.recipe, chunk, options, model)
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
        the output folder's lock. Signals wait until local work has stopped."""
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
            if self._pool is not None:
                assert self._shared is not None
                if cancel:
                    self._cancelled.set()
                    _end_processes(list(getattr(self._pool, "_processes", {}).values()))
                self._shared.close(cancel)
                self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
                self._pool = None
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
