"""``stats``: summary statistics of numeric fields of JSON Lines, grouped by keys.

A grouping key is a field name, or ``FIELD:dir`` / ``FIELD:stem`` to group by
the folder or file-name stem of a path-valued field (``image:dir`` separates
images by source folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from monolayer.errors import DataError, UsageError
from monolayer.records import new_record
from monolayer.stats import summarize

KIND = "stats"
KEY_TRANSFORMS = ("dir", "stem", "name")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_key(spec: str) -> tuple[str, str | None]:
    """Split ``FIELD[:TRANSFORM]`` and check the transform."""
    name, _, transform = spec.partition(":")
    if not name:
        raise UsageError(f"empty grouping key {spec!r}", "use --by FIELD or --by FIELD:dir")
    if transform and transform not in KEY_TRANSFORMS:
        raise UsageError(f"unknown key transform {transform!r} in {spec!r}",
                         f"use one of: {', '.join(KEY_TRANSFORMS)}")
    return name, transform or None


def key_value(record: dict[str, Any], name: str, transform: str | None) -> Any:
    value = record.get(name)
    if transform is None or value is None:
        return value
    text = str(value)
    if transform == "dir":
        return os.path.dirname(text)
    base = os.path.basename(text)
    return base if transform == "name" else base.split(".")[0]


@dataclass
class GroupedStats:
    """Values collected per (group, field), and what was skipped."""

    by: list[str]
    fields: list[str]
    values: dict[tuple[Any, ...], dict[str, list[float]]] = field(default_factory=dict)
    error_records: int = 0
    records: int = 0

    def results(self) -> Iterator[dict[str, Any]]:
        """One stats record per group and field; groups in order of first appearance."""
        for group, per_field in self.values.items():
            for name in self.fields:
                if name in per_field:
                    yield new_record(KIND, **dict(zip(self.by, group)), field=name,
                                     **summarize(per_field[name]))


def collect(records: Iterable[tuple[str, int, dict[str, Any]]], by: list[str],
            fields: list[str] | None) -> GroupedStats:
    """Group numeric values; error records are counted and skipped.

    Without ``fields``, every numeric field of the records is summarised. A
    named field holding a non-number raises :class:`DataError` with ``file:line``;
    a record lacking a named field (or holding null) contributes nothing to it.
    """
    keys = [parse_key(spec) for spec in by]
    result = GroupedStats(by=list(by), fields=list(fields or []))
    auto = not fields
    for source, number, record in records:
        if "error" in record:
            result.error_records += 1
            continue
        result.records += 1
        group = tuple(key_value(record, name, transform) for name, transform in keys)
        per_field = result.values.setdefault(group, {})
        names = ([k for k, v in record.items() if _is_number(v) and k not in by] if auto
                 else result.fields)
        for name in names:
            value = record.get(name)
            if value is None:
                continue
            if not _is_number(value):
                raise DataError(f"{source}:{number}: field {name!r} is {value!r}, not a number")
            if auto and name not in result.fields:
                result.fields.append(name)
            per_field.setdefault(name, []).append(float(value))
    return result
