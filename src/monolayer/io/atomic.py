"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A reader (or a rerun after ``kill -9``) therefore sees either no file or a
complete one under the final name, never a half-written mask.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from monolayer.errors import OutputError


def _default_mode() -> int:
    """0o666 less the umask: what an ordinary open() would give the file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _MODE)  # mkstemp makes 0600; outputs are shared like any other file
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_atomic(target: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``target``; OS errors become exit 74."""
    try:
        with atomic_path(target) as tmp:
            writer(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}",
                          "check free disk space and permissions") from None


def write_text_atomic(target: Path, text: str) -> None:
    """Write a text file atomically."""
    write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
