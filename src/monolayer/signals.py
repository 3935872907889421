"""How a run ends on a signal: SIGTERM/SIGHUP become an exception, never a half-written line.

The CLI installs :func:`install` once. SIGTERM and SIGHUP then raise
:class:`Terminated` (SIGINT raises :class:`KeyboardInterrupt`, as Python's own
handler does) in the main thread, so ``finally`` blocks and ``except BaseException``
clean-ups run: workers are ended, the output lock is released, and the exit code is
128 + the signal's number. A signal that arrives inside :func:`critical` waits until
the block is done, so a record's write and flush are never cut in the middle of a line.

Nothing here is POSIX-only at import time: signals a platform lacks are skipped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_NAMES = ("SIGTERM", "SIGHUP")
_lock = threading.Lock()
_depth = 0
_pending: int | None = None


class Terminated(BaseException):
    """The process was asked to end by a signal (not an error: the run stops cleanly).

    A BaseException, like KeyboardInterrupt, so ``except Exception`` in per-image
    error handling cannot turn the end of the run into one more error record."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum: int, frame: object) -> None:
    global _pending
    if _depth:
        if _pending is None:
            _pending = signum
        return
    _raise_for(signum)


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP (where they exist) through :func:`critical`.

    Call from the main thread of the CLI process only; a library user keeps their own
    handlers. SIGPIPE stays ignored (Python's default), so a closed pipe is an
    ``EPIPE`` error the CLI can clean up after instead of a sudden death."""
    signal.signal(signal.SIGINT, _handler)
    for name in _NAMES:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _handler)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def restore() -> None:
    """Back to the default handlers (after the command, on the way out): a late signal
    then ends the process the ordinary way instead of raising during shutdown."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in _NAMES:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP (as installed by :func:`install`) until the block ends.

    For short, must-finish work on the main thread: writing and flushing one record,
    waiting for workers to stop. Nested blocks defer until the outermost ends. With no
    handlers installed (library use) it changes nothing."""
    global _depth, _pending
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            signum = _pending if _depth == 0 else None
            if signum is not None:
                _pending = None
        if signum is not None:
            _raise_for(signum)
