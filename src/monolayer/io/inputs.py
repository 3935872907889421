"""Expanding command-line inputs into a stream of image items.

An INPUT is a file, a folder (its images, sorted by name), a quoted glob
pattern, or ``-``: JSON Lines on stdin whose records carry an ``image`` field
(plain lines holding one path each are accepted too, so ``ls *.tif |`` works).
Problems with one input become an :class:`InputItem` carrying an error, so the
batch can report it and go on.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from monolayer.errors import EXIT_DATA, EXIT_NO_INPUT
from monolayer.io.images import IMAGE_SUFFIXES

GLOB_CHARS = set("*?[")


@dataclass
class InputItem:
    """One image to process, or the reason an input could not become one."""

    image: str
    error: str | None = None
    exit_code: int = EXIT_NO_INPUT


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _folder_images(folder: Path, recursive: bool, exclude: Path | None) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if is_image_file(p) and not _under(p, exclude)),
                  key=lambda p: str(p))


def _stdin_items(stream: Iterable[str | bytes]) -> Iterator[InputItem]:
    """Images named on stdin: JSON Lines with an ``image`` field, or one path per line.

    Only the line break is removed from a plain path line (a file name may hold
    spaces); JSON goes through the same strict reader as every JSON Lines input.
    """
    from monolayer.errors import DataError
    from monolayer.records import parse_line
    from monolayer.schema import path_problem

    for number, line in enumerate(stream, start=1):
        where = f"<stdin>:{number}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                yield InputItem(image=where, exit_code=EXIT_DATA, error=f"{where}: not UTF-8 text")
                continue
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if not text.lstrip().startswith(("{", "\ufeff")):
            problem = path_problem(text)
            if problem and not Path(text).exists():
                yield InputItem(image=where, exit_code=EXIT_DATA, error=f"{where}: the path {problem}")
                continue
            yield InputItem(image=text)
            continue
        try:
            record = parse_line(text.strip(), where)
        except DataError as exc:
            yield InputItem(image=where, exit_code=EXIT_DATA, error=str(exc))
            continue
        if "image" not in record:
            yield InputItem(image=where, exit_code=EXIT_DATA, error=f"{where}: record has no 'image' field")
            continue
        problem = path_problem(record["image"])
        if problem:
            yield InputItem(image=where, exit_code=EXIT_DATA, error=f"{where}: field 'image' {problem}")
            continue
        yield InputItem(image=record["image"])


def expand_inputs(inputs: Iterable[str], *, recursive: bool = False,
                  stdin: Iterable[str] | None = None,
                  exclude: Path | None = None) -> Iterator[InputItem]:
    """Yield one item per image named by ``inputs``, each path once, in the order given.

    Folders and patterns skip files under ``exclude`` (the output folder), so a
    rerun of ``segment data/ --out data/masks -r`` does not segment its own masks.
    """
    seen: set[str] = set()
    exclude = exclude.resolve() if exclude is not None else None

    def once(item: InputItem) -> Iterator[InputItem]:
        if item.error is None:
            key = str(Path(item.image).resolve())
            if key in seen:
                return
            seen.add(key)
        yield item

    for raw in inputs:
        if raw == "-":
            for item in _stdin_items(stdin if stdin is not None else sys.stdin.buffer):
                yield from once(item)
            continue
        path = Path(raw)
        if path.is_dir():
            images = _folder_images(path, recursive, exclude)
            if not images:
                yield InputItem(image=raw, error=f"{raw}: folder holds no images "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            for image in images:
                yield from once(InputItem(image=str(image)))
        elif path.exists() and not path.is_file():
            # /dev/zero never ends and a FIFO blocks: refused before anything reads them.
            yield InputItem(image=raw, exit_code=EXIT_DATA,
                            error=f"{raw}: not a regular file (a device, FIFO or socket)")
        elif path.exists():
            yield from once(InputItem(image=raw))
        elif GLOB_CHARS & set(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            files = [m for m in matches if is_image_file(Path(m)) and not _under(Path(m), exclude)]
            if not files:
                yield InputItem(image=raw, error=f"{raw}: pattern matches no images")
            for match in files:
                yield from once(InputItem(image=match))
        else:
            yield InputItem(image=raw, error=f"{raw}: no such file or folder")
