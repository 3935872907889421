"""JSON Lines records: self-describing output, streaming input with ``file:line`` errors.

Every record written by monolayer carries ``schema`` (``monolayer.<kind>/<major>``)
and ``version`` (the tool version), so a line explains itself months later.
Numbers are plain JSON numbers (never ``"45%"`` strings); non-finite floats are
written as ``null`` because JSON has no NaN.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from monolayer import __version__
from monolayer.errors import DataError, NoInputError

SCHEMA_MAJOR = 1


def schema_tag(kind: str) -> str:
    """The schema tag of a record kind, e.g. ``monolayer.segment/1``."""
    return f"monolayer.{kind}/{SCHEMA_MAJOR}"


def new_record(kind: str, **fields: Any) -> dict[str, Any]:
    """A record of ``kind`` with the schema tag and tool version first."""
    return {"schema": schema_tag(kind), "version": __version__, **fields}


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: numpy scalars to Python, NaN/inf to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(record: dict[str, Any]) -> str:
    """One record as one compact JSON line (no trailing newline)."""
    return json.dumps(_clean(record), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class RecordWriter:
    """Writes records to a text stream, one line each, flushed per record.

    Flushing per record means a consumer downstream of a pipe (or a ``tail -f``)
    sees each result as soon as it exists, and a killed run leaves only whole lines.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(dumps(record) + "\n")
        self._stream.flush()
        self.count += 1

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.write(record)


def _open_text(path: str | Path) -> IO[str]:
    if str(path) == "-":
        return sys.stdin
    p = Path(path)
    if not p.exists():
        raise NoInputError(f"no such file: {p}", "check the path")
    if p.is_dir():
        raise DataError(f"{p} is a folder, not a JSON Lines file")
    return p.open("r", encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a JSON Lines file (``-`` is stdin), lazily.

    Blank lines are skipped. A line that is not a JSON object raises
    :class:`DataError` naming ``file:line``.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    stream = _open_text(path)
    try:
        for number, line in enumerate(stream, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}:{number}: not valid JSON ({exc.msg})",
                                "each line must be one JSON object") from None
            except UnicodeDecodeError:
                raise DataError(f"{name}:{number}: not UTF-8 text") from None
            if not isinstance(record, dict):
                raise DataError(f"{name}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record
    except UnicodeDecodeError:
        raise DataError(f"{name}: not UTF-8 text", "is this a JSON Lines file?") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def iter_many(paths: Iterable[str | Path]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield ``(file_name, line_number, record)`` over several JSON Lines files in order."""
    for path in paths:
        name = "<stdin>" if str(path) == "-" else str(path)
        for number, record in iter_jsonl(path):
            yield name, number, record
