"""A record and its files always agree: checksums of outputs, and one run per output folder.

Two mechanisms:

* Every record that names a file carries the file's SHA-256 (``mask_sha256``,
  ``prob_sha256``, ...); a command that reads the file through a record checks
  the checksum first (:func:`verify_file`), so a mask replaced since the record
  was written is an error, never another image's numbers.
* An output folder belongs to one run configuration. ``OUT/.monolayer/run.json``
  names the command and the parameters that determine its files (the
  *fingerprint*); a second run with other parameters into the same folder is
  refused (exit 2) unless ``--overwrite``, which first deletes the files the
  previous run wrote (listed in ``OUT/.monolayer/outputs.list``) and nothing
  else. Rerunning the same configuration (a nightly job) is always allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from monolayer.errors import DataError, OutputError, UsageError

STATE_DIR = ".monolayer"
CLAIM = "run.json"
OUTPUTS = "outputs.list"
# Suffixes of the files monolayer writes into an output folder: a folder holding
# such files without a claim was written by an older monolayer or by hand.
OUTPUT_SUFFIXES = (".mask.tif", ".prob.tif", ".labels.tif", ".binary.tif", ".overlay.png")


def verify_file(path: str | Path, expected: Any, where: str, field: str) -> None:
    """Raise :class:`DataError` unless the file at ``path`` has the SHA-256 ``expected``.

    ``expected`` None (a record from another tool, without checksums) checks nothing.
    """
    if expected is None:
        return
    from monolayer.io.images import sha256_file

    try:
        actual = sha256_file(Path(path))
    except FileNotFoundError:
        raise DataError(f"{where}: {path} named by {field.removesuffix('_sha256')!r} does not exist",
                        "was it moved or deleted? rerun the command that wrote it") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if actual != expected:
        raise _mismatch(path, expected, actual, where, field)


def _mismatch(path: str | Path, expected: str, actual: str, where: str, field: str) -> DataError:
    return DataError(f"{where}: {path} is not the file this record was written with "
                     f"({field} {str(expected)[:12]}..., the file has {actual[:12]}...)",
                     "it was replaced since; rerun the command that wrote it")


def load_verified(path: str | Path, expected: Any, where: str, field: str, *, as_stored: bool = True,
                  page: int = 0) -> Any:
    """The image at ``path`` (:func:`monolayer.io.images.load_image`), read once and checked
    against the SHA-256 ``expected`` from that same read: what :func:`verify_file` then a
    second read would do, with half the I/O (evaluate reads two masks per record)."""
    from monolayer.io.images import load_image

    if expected is not None and not Path(path).exists():
        verify_file(path, expected, where, field)  # its one-line message for a missing file
    loaded = load_image(path, page, as_stored=as_stored)
    if expected is not None and loaded.sha256 != expected:
        raise _mismatch(path, expected, loaded.sha256, where, field)
    return loaded


def _open_append(path: Path) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}",
                          "a symbolic link there is refused; check permissions") from None


def _state(out: Path) -> Path:
    folder = out / STATE_DIR
    if folder.is_symlink():
        raise OutputError(f"{folder} is a symbolic link; monolayer keeps its state only in a real folder",
                          "remove the link")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class OutputList:
    """The names of the files runs of this configuration write in ``out`` (``outputs.list``),
    so a later ``--overwrite`` deletes exactly them. Names are added *before* their
    files are written, so a file exists only if its name is listed, whatever happens
    to the run (a kill, a failed record); each name is listed once."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = _state(out) / OUTPUTS
        self._known: set[str] = set()
        if self.path.is_file() and not self.path.is_symlink():
            self._known = set(self.path.read_bytes().decode("utf-8", "surrogateescape").splitlines())

    def add(self, names: Iterable[str]) -> None:
        new = list(dict.fromkeys(os.path.basename(n) for n in names
                                 if n and os.path.basename(n) not in self._known))
        if not new:
            return
        fd = _open_append(self.path)
        try:
            os.write(fd, "".join(f"{n}\n" for n in new).encode("utf-8", "surrogateescape"))
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}", "check free disk space") from None
        finally:
            os.close(fd)
        self._known.update(new)


def _remove_outputs(out: Path) -> int:
    """Delete the regular files listed in ``outputs.list`` (never a link, never outside ``out``)."""
    state = out / STATE_DIR
    listing = state / OUTPUTS
    removed = 0
    if listing.is_file() and not listing.is_symlink():
        for line in listing.read_bytes().decode("utf-8", "surrogateescape").splitlines():
            name = line.strip("\n")
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                continue
            target = out / name
            with contextlib.suppress(FileNotFoundError):
                if target.is_symlink() or not target.is_file():
                    continue
                target.unlink()
                removed += 1
    for name in (OUTPUTS, "segment.journal"):
        with contextlib.suppress(FileNotFoundError):
            (state / name).unlink()
    return removed


def _unclaimed_outputs(out: Path) -> list[str]:
    try:
        names = os.listdir(out)
    except OSError:
        return []
    return sorted(n for n in names if n.lower().endswith(OUTPUT_SUFFIXES) and not n.startswith("."))


def _flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {prefix.rstrip("."): doc}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two run configurations, briefly: ``method phase, now canny``.

    >>> difference({"command": "segment", "fingerprint": {"method": "phase", "page": 0}},
    ...            {"command": "segment", "fingerprint": {"method": "canny", "page": 0}})
    'method phase, now canny'
    """
    if before.get("command") != now.get("command"):
        return f"written by {before.get('command')}, not {now.get('command')}"
    old, new = _flat(before.get("fingerprint") or {}), _flat(now.get("fingerprint") or {})
    show = lambda v: "none" if v is None else json.dumps(v) if not isinstance(v, str) else v  # noqa: E731
    changed = [f"{k} {show(old.get(k))}, now {show(new.get(k))}" for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k)]
    text = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
    return text or "another configuration"


def claim_folder(out: Path, command: str, fingerprint: dict[str, Any], *, overwrite: bool) -> int:
    """Make ``out`` this run configuration's folder, or refuse; return the number of
    files a ``--overwrite`` deleted. Call it while holding the folder's lock."""
    from monolayer.io.atomic import write_text_atomic

    state = _state(out)
    claim_path = state / CLAIM
    wanted = json.loads(json.dumps({"command": command, "fingerprint": fingerprint}, sort_keys=True,
                                   default=str))
    previous: Any = None
    if claim_path.is_symlink():
        raise OutputError(f"{claim_path} is a symbolic link", "remove the link")
    if claim_path.is_file():
        try:
            from monolayer.records import strict_loads

            previous = strict_loads(claim_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            previous = {"command": "?", "fingerprint": {"unreadable": str(claim_path)}}
        if isinstance(previous, dict) and {k: previous.get(k) for k in wanted} == wanted:
            return 0
        if not overwrite:
            before = previous if isinstance(previous, dict) else {}
            raise UsageError(
                f"{out} holds the outputs of another run ({difference(before, wanted)}); "
                "this run would mix its files and records with them",
                "use a new --out, or --overwrite to delete that run's outputs first")
    else:
        stray = _unclaimed_outputs(out)
        if stray and not overwrite:
            raise UsageError(f"{out} already holds {len(stray)} output file(s) that no recorded run "
                             f"wrote, e.g. {stray[0]}",
                             "use a new --out, or --overwrite to write beside them")
    removed = _remove_outputs(out) if overwrite and previous is not None else 0
    write_text_atomic(claim_path, json.dumps({**wanted, "version": _version()}, indent=1, sort_keys=True) + "\n")
    return removed


def _version() -> str:
    from monolayer import __version__

    return __version__
