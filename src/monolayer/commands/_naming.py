"""Output file names: one stem per input image, unique within a run, never leaving the folder."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

from monolayer.coco import safe_stem


class OutputNamer:
    """Hands out output stems, unique within one run; every command that writes files
    per input names them through this one class.

    The first input with a given stem gets it plain (``set4``); a later input of
    the same stem (another folder, another COCO entry) gets a suffix from its
    identity's hash (``set4-1a2b3c4d``). Every stem handed out is checked against
    all others, suffixed ones included, and case-insensitively (macOS and Windows
    file systems fold case), so two inputs never share an output file.

    >>> namer = OutputNamer()
    >>> a, b, c = namer.stem("p1/A01.tif", "p1"), namer.stem("A01-3.tif", "x"), namer.stem("p2/a01.tif", "p2")
    >>> a, b, len({a.casefold(), b.casefold(), c.casefold()})
    ('A01', 'A01-3', 3)
    """

    def __init__(self) -> None:
        self._taken: dict[str, str] = {}

    def stem(self, name: str | Path, identity: object = None, fallback_id: object = None) -> str:
        """A unique stem for the input ``name``; ``identity`` tells two inputs apart
        (default: the resolved path). The same identity always gets the same stem.
        A name with no usable stem becomes ``image-<fallback_id>`` (default: a hash)."""
        ident = str(Path(name).resolve()) if identity is None else str(identity)
        digest = hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()
        base = safe_stem(str(name), digest[:8] if fallback_id is None else fallback_id)
        candidates = itertools.chain([base, f"{base}-{digest[:8]}"],
                                     (f"{base}-{digest[:8]}-{n}" for n in range(2, 10_000)))
        for candidate in candidates:
            owner = self._taken.get(candidate.casefold())
            if owner is None or owner == ident:
                self._taken[candidate.casefold()] = ident
                return candidate
        raise RuntimeError(f"no free output name for {name}")  # 10,000 inputs of one name and hash


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refusing any name that is not a plain file name in ``folder``.

    Only the folder is resolved (``--out`` may itself be a link to a folder); the
    name's own entry is not, so an output name that exists as a link is left for the
    writer to refuse (:func:`monolayer.io.atomic.refuse_link`) with a clear error.

    >>> inside(Path("out"), "a.mask.tif").as_posix()
    'out/a.mask.tif'
    """
    separators = {"/", os.sep, os.altsep or "/", "\0"}
    if not name or name in (".", "..") or any(sep in name for sep in separators):
        raise ValueError(f"output name {name!r} leaves {folder}")
    base = folder.resolve()
    if (base / name).parent != base:
        raise ValueError(f"output name {name!r} leaves {folder}")
    return folder / name
