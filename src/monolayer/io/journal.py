"""What a batch run leaves in its output folder so that a rerun is safe and cheap.

``OUT/.monolayer/``:

``lock``
    An exclusive lock held for the whole run (``flock`` on POSIX, ``msvcrt.locking``
    of one byte on Windows). The operating system drops it when the process ends,
    however it ends (``kill -9`` included), so a stale lock cannot block the next
    night's run. A second run on the same folder exits 75 (temporary failure: try
    again later) naming the holder written in the file, or, with ``--wait``, waits
    for it.
``segment.journal``
    One line per finished image, appended with a single ``write(2)`` on an
    ``O_APPEND`` descriptor after the image's mask is in place (masks are written
    atomically): ``{"key": ..., "record": {...}, "files": {...}}``. ``key`` is a SHA-256 over the
    image's content, the model (name, parameters, weights' SHA-256) and the
    options that change the output, so ``--skip-existing`` reuses a result only
    for the same image content, model, weights and parameters, whatever the file
    is called. A line cut short by a crash is not valid JSON and is ignored; the
    image it belonged to is simply computed again. ``files`` holds the identity
    (size, mtime, inode) of each output file, so a result is reused only while
    its mask is the very file it wrote.

Leftover temporary files of atomic writes that a crash interrupted
(``.NAME.monolayer-XXXXXXXX.part``, regular files of this user) are removed when the
next run takes the lock; nothing else in OUT is ever deleted.

Neither ``OUT/.monolayer`` nor a file in it is followed if it is a symbolic link:
such a link is refused with one line (exit 74), so a planted link cannot make a run
truncate or append to a file outside OUT.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monolayer.errors import EXIT_TEMPFAIL, MonolayerError, OutputError
from monolayer.io.atomic import NOFOLLOW, remove_own_partials
from monolayer.records import dumps

STATE_DIR = ".monolayer"


class BusyError(MonolayerError):
    """Another run holds the output folder's lock."""

    exit_code = EXIT_TEMPFAIL


def state_dir(out: Path) -> Path:
    return out / STATE_DIR


def _not_a_link(path: Path) -> None:
    if os.path.islink(path):
        raise OutputError(f"{path} is a symbolic link; monolayer does not write through links",
                          "remove the link")


def open_state_file(out: Path, name: str, flags: int, what: str) -> int:
    """Open ``OUT/.monolayer/NAME`` (creating the folder) without following a link at
    either level; a link, or something that is not a regular file, is refused."""
    folder = state_dir(out)
    # O_BINARY (Windows only): in text mode os.write would turn each "\n" of the journal
    # into "\r\n", and the byte counts and offsets below would no longer match the lines.
    flags |= NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        _not_a_link(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
            # The folder itself opened with O_NOFOLLOW: a link swapped in after the check
            # above is still not followed.
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
            try:
                fd = os.open(name, flags, 0o644, dir_fd=folder_fd)
            finally:
                os.close(folder_fd)
        else:
            fd = os.open(folder / name, flags, 0o644)
    except OSError as exc:
        _not_a_link(folder)
        _not_a_link(folder / name)
        raise OutputError(f"cannot open {what} {folder / name}: {exc.strerror or exc}",
                          "check permissions and free space") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{folder / name} is not a regular file", "remove it; monolayer makes a new one")
    return fd


@contextmanager
def output_lock(out: Path, wait: bool = False, on_wait: Any = None) -> Iterator[None]:
    """Hold ``OUT/.monolayer/lock`` for the block; busy: :class:`BusyError` or wait."""
    fd = open_state_file(out, "lock", os.O_RDWR | os.O_CREAT, "the lock")
    locked = False
    try:
        if not _lock(fd, block=False):
            holder = _read_at(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            if not wait:
                raise BusyError(f"another monolayer run ({holder}) is writing to {out}",
                                "wait for it to finish, or pass --wait to queue behind it")
            if on_wait is not None:
                on_wait(holder)
            _lock(fd, block=True)
        locked = True
        os.ftruncate(fd, 0)
        _write_at(fd, f"pid {os.getpid()}".encode(), 0)
        remove_own_partials(out)
        yield
    finally:
        if locked:
            _unlock(fd)
        os.close(fd)  # releases the lock (POSIX) whatever happened above


# Windows locks are mandatory: a locked byte cannot be read by another process. The lock
# is therefore taken on one byte far past the holder's "pid N", which stays readable to
# the run that is refused or waits. (Locking past the end of a file is allowed there.)
WINDOWS = os.name == "nt"
_WINDOWS_LOCK_OFFSET = 1 << 30
_WINDOWS_POLL_S = 0.2


def _lock(fd: int, *, block: bool) -> bool:
    """Take the exclusive lock on ``fd``; False if another process holds it and not ``block``.

    The platform's module is imported here, not at the top: ``fcntl`` does not exist
    on Windows and ``msvcrt`` exists only there, and the whole CLI imports this module.
    """
    if WINDOWS:
        return _lock_windows(fd, block=block)
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _lock_windows(fd: int, *, block: bool) -> bool:
    import msvcrt

    busy = {errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}
    while True:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            # LK_NBLCK, polled: LK_LOCK gives up with an error after ten seconds, --wait must not.
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError as exc:
            if exc.errno not in busy:
                raise
        if not block:
            return False
        time.sleep(_WINDOWS_POLL_S)


def _unlock(fd: int) -> None:
    """Release the lock explicitly on Windows, where a lock left to ``close`` is freed after a
    delay that "depends upon available system resources"; on POSIX closing ``fd`` releases it."""
    if not WINDOWS:
        return
    import msvcrt

    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass  # closing the descriptor next releases it anyway


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` where it exists (not on Windows); the descriptor is this module's own."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, offset)
        return
    os.lseek(fd, offset, os.SEEK_SET)
    os.write(fd, data)


def file_identity(path: str) -> list[int] | None:
    """(size, modification time in ns, inode) of an output file, or None if it is gone.

    Outputs are replaced by rename, so another image's mask written over ours later
    has another inode: a journaled result is reused only while its files are the
    very ones it wrote. A link put in an output's place is not that file (lstat)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def result_key(image_sha256: str, model: dict[str, Any], options: dict[str, Any]) -> str:
    """Identity of one result: image content + model + weights + output-changing options."""
    text = json.dumps({"image": image_sha256, "model": model, "options": options}, sort_keys=True,
                      default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Journal:
    """The append-only list of finished results in an output folder.

    Memory stays small whatever the journal's length: only ``key -> byte offset``
    is kept, and a record is read back from disk when it is reused.
    """

    def __init__(self, out: Path, name: str) -> None:
        self._out, self._file = out, f"{name}.journal"
        self.path = state_dir(out) / self._file
        self._offsets: dict[str, int] = {}
        if os.path.lexists(self.path):
            self._scan()
        self._fd: int | None = None
        self._torn = False

    def _open_read(self) -> Any:
        """The journal for reading, never through a link (a link is :class:`OutputError`)."""
        return os.fdopen(open_state_file(self._out, self._file, os.O_RDONLY, "the journal"), "rb")

    def _scan(self) -> None:
        offset = 0
        with self._open_read() as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    try:
                        entry = json.loads(line)
                        key = entry["key"]
                        if isinstance(key, str) and isinstance(entry.get("record"), dict):
                            self._offsets[key] = offset
                    except (ValueError, KeyError, TypeError):
                        pass  # a torn or foreign line: that result is computed again
                offset += len(line)

    def __len__(self) -> int:
        return len(self._offsets)

    def get(self, key: str) -> dict[str, Any] | None:
        """The journal entry for ``key``: ``record`` and ``files`` (see :func:`file_identity`)."""
        offset = self._offsets.get(key)
        if offset is None:
            return None
        with self._open_read() as handle:
            handle.seek(offset)
            return json.loads(handle.readline())

    def append(self, key: str, record: dict[str, Any], files: dict[str, list[int]] | None = None) -> None:
        """Append one entry with a single write; an interrupted write leaves a torn last
        line, which readers ignore. A full disk is an :class:`OutputError` (exit 74)."""
        if self._fd is None:
            self._fd = open_state_file(self._out, self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                       "the journal")
            self._torn = os.fstat(self._fd).st_size > 0 and not self._ends_with_newline()
        data = (dumps({"key": key, "record": record, "files": files or {}}) + "\n").encode()
        if self._torn:  # a crash or a failed write cut the last line: start on a fresh one
            data = b"\n" + data
        offset = os.fstat(self._fd).st_size + (1 if self._torn else 0)
        self._torn = True  # until the whole line is known to be written
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            raise OutputError(f"cannot append to {self.path}: {exc.strerror or exc}",
                              "check free disk space") from None
        if written != len(data):
            raise OutputError(f"short write to {self.path} ({written} of {len(data)} bytes)",
                              "check free disk space")
        self._torn = False
        self._offsets[key] = offset

    def _ends_with_newline(self) -> bool:
        with self._open_read() as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
