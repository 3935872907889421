"""Output file names: one stem per input image, unique within a run, never leaving the folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from monolayer.coco import safe_stem


class OutputNamer:
    """Hands out output stems.

    The first image with a given stem gets it plain (``set4``); a later image of
    the same stem from another folder gets a suffix from its path's hash
    (``set4-1a2b3c4d``), so two inputs never overwrite each other's masks.
    """

    def __init__(self) -> None:
        self._taken: dict[str, str] = {}

    def stem(self, image: str | Path, fallback_id: object = "") -> str:
        path = str(Path(image).resolve())
        base = safe_stem(str(image), fallback_id or hashlib.sha1(path.encode()).hexdigest()[:8])
        owner = self._taken.get(base)
        if owner is None or owner == path:
            self._taken[base] = path
            return base
        unique = f"{base}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        self._taken[unique] = path
        return unique


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refusing any name that would resolve outside ``folder``."""
    target = (folder / name).resolve()
    if target.parent != folder.resolve():
        raise ValueError(f"output name {name!r} leaves {folder}")
    return folder / name
