"""stdout as the CLI uses it: UTF-8 whatever the locale, and a failed write a clear exit code.

:func:`guard_stdout` puts a thin layer under ``sys.stdout`` so that a write that the
operating system refuses becomes :class:`~monolayer.errors.StdoutError` (``> /dev/full``:
exit 74, one line) or :class:`~monolayer.errors.PipeClosed` (the reader of a pipe went
away: exit 141, quietly), raised where the record was written, so the command's own
clean-up (ending workers, releasing the lock) runs first. :func:`release_stdout` then
drops whatever is still buffered, so the interpreter's last flush cannot print an
"Exception ignored" message after the one line.
"""

from __future__ import annotations

import io
import sys

from monolayer.errors import PipeClosed, StdoutError


class _GuardedStdout(io.FileIO):
    """File descriptor 1, with the OS's write errors turned into monolayer's."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "wb", closefd=False)
        self.discard = False

    def write(self, data: bytes) -> int | None:  # type: ignore[override]
        if self.discard:
            return len(data)
        try:
            return super().write(data)
        except BrokenPipeError:
            raise PipeClosed("stdout: the reading end of the pipe is closed") from None
        except BlockingIOError:
            raise
        except OSError as exc:
            raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}",
                              "check free space and the device where stdout goes") from None


_guard: _GuardedStdout | None = None


def guard_stdout() -> None:
    """Make ``sys.stdout`` UTF-8 (JSON Lines is UTF-8 whatever the locale) with write
    errors as exceptions that carry an exit code. Call once, before any output."""
    global _guard
    stream = sys.stdout
    if stream is None:
        return
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None or sys.platform == "win32":
        # Not a real file descriptor (embedded, a test harness) or a Windows console,
        # whose own writer handles Unicode: only the encoding is fixed.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")
        return
    stream.flush()
    _guard = _GuardedStdout(fd)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_guard), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=stream.line_buffering)
    if sys.stderr is not None and hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(errors="backslashreplace")


def release_stdout() -> StdoutError | PipeClosed | None:
    """Flush stdout one last time and return the error if that fails (output the
    command left unflushed); from then on, whatever is still buffered goes nowhere."""
    if _guard is None:
        return None
    try:
        sys.stdout.flush()
        return None
    except (StdoutError, PipeClosed) as exc:
        return exc
    finally:
        _guard.discard = True
