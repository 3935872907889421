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
        return {printable(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return printable(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def printable(text: str) -> str:
    """``text`` as valid Unicode: a file name that is not UTF-8 (held by Python as lone
    surrogates) shows its odd bytes as ``\\xNN`` instead of making the record unwritable.

    >>> printable("ok.tif"), printable("bad\\udcff.tif")
    ('ok.tif', 'bad\\\\xff.tif')
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
            if _only_escapes(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_escapes(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


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
        from monolayer.signals import critical

        line = dumps(record) + "\n"
        with critical():  # a SIGTERM waits until the line is out: never half a record
            self._stream.write(line)
            self._stream.flush()
        self.count += 1

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.write(record)


MAX_DEPTH = 64
"""Deepest nesting a record may have: monolayer writes at most 3 levels; deeper input is
refused with a message instead of exhausting Python's recursion limit."""


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def _check_strings(record: Any) -> str | None:
    """Why a parsed record cannot be used (NUL bytes, lone surrogates, nesting), or None."""
    from monolayer.schema import text_problem

    stack: list[tuple[Any, int]] = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(key)
                if problem:
                    return f"a key {problem}"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            problem = text_problem(value)
            if problem:
                return f"a string {problem}"
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the key {duplicate!r} appears twice in one object")
    return dict(pairs)


def strict_loads(text: str) -> Any:
    """:func:`json.loads` that refuses what JSON readers disagree on or cannot survive:
    ``NaN``/``Infinity`` tokens, a key given twice in one object (which value counts?),
    and nesting too deep to parse. Every failure is a :class:`ValueError`.

    >>> strict_loads('{"a": 1}')
    {'a': 1}
    >>> strict_loads('{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    ValueError: the key 'a' appears twice in one object
    """
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def parse_line(text: str, where: str) -> dict[str, Any]:
    """One JSON Lines record, or :class:`DataError` naming ``where`` (``file:line``).

    Stricter than :func:`json.loads`: ``NaN``/``Infinity`` tokens, a byte-order mark,
    NUL bytes and lone surrogates in strings, and nesting deeper than
    :data:`MAX_DEPTH` are refused, so no such value reaches a number or a path.
    """
    if text.startswith("\ufeff"):
        raise DataError(f"{where}: starts with a byte-order mark (BOM)",
                        "save the file as UTF-8 without BOM")
    try:
        record = strict_loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})", "each line must be one JSON object") from None
    except ValueError as exc:
        raise DataError(f"{where}: not valid JSON ({exc})", "each line must be one JSON object") from None
    except RecursionError:
        raise DataError(f"{where}: nested too deeply to read") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    problem = _check_strings(record)
    if problem:
        raise DataError(f"{where}: {problem}")
    return record


def _open_binary(path: str | Path) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.exists():
        raise NoInputError(f"no such file: {p}", "check the path")
    if p.is_dir():
        raise DataError(f"{p} is a folder, not a JSON Lines file")
    try:
        return p.open("rb")
    except OSError as exc:
        raise NoInputError(f"cannot open {p}: {exc.strerror or exc}") from None


def iter_jsonl(path: str | Path, *, errors: str = "raise") -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)`` from a JSON Lines file (``-`` is stdin), lazily.

    Blank lines are skipped. A bad line (see :func:`parse_line`, or not UTF-8)
    raises :class:`DataError` naming ``file:line``; with ``errors="yield"`` the
    error is yielded in the record's place instead, so a batch can record it for
    that line and go on.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    stream = _open_binary(path)
    try:
        for number, raw in enumerate(stream, start=1):
            where = f"{name}:{number}"
            try:
                try:
                    text = raw.decode("utf-8").strip(" \t\r\n")
                except UnicodeDecodeError:
                    raise DataError(f"{where}: not UTF-8 text") from None
                if not text:
                    continue
                record = parse_line(text, where)
            except DataError as exc:
                if errors == "raise":
                    raise
                yield number, exc
                continue
            yield number, record
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def iter_many(paths: Iterable[str | Path], *, errors: str = "raise") -> Iterator[tuple[str, int, Any]]:
    """Yield ``(file_name, line_number, record)`` over several JSON Lines files in order
    (``errors`` as for :func:`iter_jsonl`)."""
    for path in paths:
        name = "<stdin>" if str(path) == "-" else str(path)
        for number, record in iter_jsonl(path, errors=errors):
            yield name, number, record
