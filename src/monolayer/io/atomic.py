"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A reader (or a rerun after ``kill -9``) therefore sees either no file or a
complete one under the final name, never a half-written mask.

The output folder is a boundary: a target that is a symbolic link is refused
(never written through, never replaced), and temporary files carry a name no user
file has (``.NAME.monolayer-XXXXXXXX.part``, see :func:`is_own_partial`), so a
clean-up after a crash deletes only what monolayer itself left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from monolayer.errors import CantCreateError, OutputError

PART_MARK = ".monolayer-"
"""What sets monolayer's temporary files apart: ``.NAME.monolayer-XXXXXXXX.part``."""
_PART_NAME = re.compile(r"\..+\.monolayer-[a-z0-9_]{8}\.part\Z", re.DOTALL)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _default_mode() -> int:
    """0o666 less the umask: what an ordinary open() would give the file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


def present(path: Path) -> bool:
    """``path.exists()`` for a path the user gave as an output: a path that cannot even
    be looked up (a name too long, a file where a folder should be) is not there, and
    creating it later gives the clear error (:func:`ensure_folder`) instead of a traceback."""
    return os.path.exists(path)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


def check_name(target: Path) -> None:
    """:class:`CantCreateError` (exit 73) if the file name of ``target`` is longer than
    its folder's file system allows: said before any work, not after it."""
    if len(os.fsencode(target.name)) > _name_max(target.parent):
        raise CantCreateError(f"cannot create output file {target}: {os.strerror(errno.ENAMETOOLONG)}",
                              "choose a shorter name")


def ensure_folder(path: Path, *, file_name: str | None = None) -> Path:
    """Create the output folder ``path`` (and its parents) unless it is there; a folder
    that cannot be created is :class:`CantCreateError` (exit 73) naming why. With
    ``file_name``, also check that a file of that name can be made in it (its length).

    A symbolic link to a folder is a folder here: users point ``--out`` at one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            hint = "choose a shorter name"
        elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
            hint = "a file is in the way: choose another path or move the file"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "check the permissions of the parent folder, or choose another path"
        else:
            hint = "check the path, permissions and free space"
        raise CantCreateError(f"cannot create output folder {path}: {exc.strerror or exc}", hint) from None
    if file_name is not None:
        check_name(path / file_name)
    return path


def refuse_link(path: Path) -> None:
    """:class:`OutputError` if ``path`` is a symbolic link: an output is never written
    through one (it could point anywhere), nor is a link the user made replaced."""
    if os.path.islink(path):
        raise OutputError(f"{path} is a symbolic link; monolayer does not write through links",
                          "remove the link")


def is_own_partial(folder: str | os.PathLike[str], name: str) -> bool:
    """Whether ``folder/name`` is a temporary file monolayer left: the exact name
    pattern, a regular file (not a link), owned by the current user."""
    if not _PART_NAME.match(name):
        return False
    try:
        st = os.lstat(os.path.join(folder, name))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def remove_own_partials(folder: Path) -> int:
    """Delete the temporary files a crashed run left in ``folder`` (see
    :func:`is_own_partial`); anything else, ``notes.part`` included, stays."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if is_own_partial(folder, name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    A ``target`` that is a symbolic link is refused (:class:`OutputError`)."""
    ensure_folder(target.parent, file_name=target.name)
    refuse_link(target)
    # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW: it never follows a planted link.
    # (The name is cut short so that a target name near the length limit still has room.)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:100]}{PART_MARK}", suffix=".part", dir=target.parent)
    tmp_path = Path(tmp)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _MODE)  # mkstemp makes 0600; outputs are shared like any other file
        else:
            os.chmod(tmp_path, _MODE)
        created = os.fstat(fd)
        yield tmp_path
        # The writer opened the name again: it must still be the file mkstemp made.
        now = os.lstat(tmp_path)
        if (now.st_dev, now.st_ino) != (created.st_dev, created.st_ino) or not stat.S_ISREG(now.st_mode):
            raise OutputError(f"{tmp_path} was replaced while it was being written",
                              "is another program writing to the output folder?")
        refuse_link(target)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            if is_own_partial(tmp_path.parent, tmp_path.name):
                tmp_path.unlink()
        raise
    finally:
        os.close(fd)


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
