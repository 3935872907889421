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
from monolayer.schema import check_tagged, finite_float
from monolayer.stats import group_key, summarize

KIND = "stats"
KEY_TRANSFORMS = ("dir", "stem", "name")
ANY_FLAG = "any"


@dataclass(frozen=True)
class FlagFilter:
    """``--exclude-flag`` / ``--only-flag``: which records to keep by their image-quality
    ``flags`` (the names of :data:`monolayer.qc.FLAGS`, or ``any``).

    ``only``: keep a record carrying at least one of these flags (``any``: at least one
    flag); ``exclude``: then drop a record carrying any of these (``any``: any flag).
    A record without a ``flags`` field (made before quality checks, or not a segment
    record) counts as unknown: dropped by ``only``, kept by ``exclude``, and counted, so
    the caller can say so. ``any`` means any non-empty ``flags`` list, names this version
    does not know (a later version's) included. Callers apply it to segment records only
    (a growth forecast's flags are not quality flags).

    >>> FlagFilter(exclude=("any",)).keeps({"flags": ["saturated"]})
    False
    >>> FlagFilter(exclude=("any",)).keeps({"flags": ["a_later_versions_flag"]})
    False
    >>> FlagFilter(only=("out_of_focus",)).keeps({"flags": ["saturated", "out_of_focus"]})
    True
    >>> FlagFilter(exclude=("blurry",))
    Traceback (most recent call last):
    ...
    monolayer.errors.UsageError: unknown flag 'blurry' (choose from: invalid_pixels, out_of_focus, saturated, uneven_illumination, no_texture, unlike_calibration, any)
    """

    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from monolayer.qc import FLAGS

        for name in (*self.exclude, *self.only):
            if name != ANY_FLAG and name not in FLAGS:
                raise UsageError(f"unknown flag {name!r}", f"choose from: {', '.join((*FLAGS, ANY_FLAG))}")

    @property
    def active(self) -> bool:
        return bool(self.exclude or self.only)

    def describe(self) -> str:
        """The filter as the options that made it, e.g. ``--exclude-flag any``."""
        return " ".join([*(f"--only-flag {n}" for n in self.only), *(f"--exclude-flag {n}" for n in self.exclude)])

    @staticmethod
    def _matches(flags: set[str], names: tuple[str, ...]) -> bool:
        return bool(flags) if ANY_FLAG in names else bool(flags.intersection(names))

    def keeps(self, record: dict[str, Any]) -> bool:
        if not self.active:
            return True
        raw = record.get("flags")
        if not isinstance(raw, list):
            return not self.only
        flags = {str(f) for f in raw}  # a name this version does not know (a later one's) is still a flag
        if self.only and not self._matches(flags, self.only):
            return False
        return not (self.exclude and self._matches(flags, self.exclude))


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
    """Values collected per (group, field), and what was skipped. A group is keyed by its
    values' :func:`~monolayer.stats.group_key`: 1, 1.0 and true are three groups."""

    by: list[str]
    fields: list[str]
    values: dict[tuple[tuple[str, Any], ...], dict[str, list[float]]] = field(default_factory=dict)
    error_records: int = 0
    records: int = 0
    filtered_out: int = 0
    """Records left out by the flag filter."""
    without_flags: int = 0
    """Records with no ``flags`` field while a flag filter was given."""
    kept: dict[tuple[tuple[str, Any], ...], int] = field(default_factory=dict)
    """Records kept per group (a group the flag filter emptied holds 0)."""

    def emptied(self) -> list[dict[str, Any]]:
        """The groups whose every record the flag filter left out (as {key: value})."""
        return [dict(zip(self.by, (value for _, value in group))) for group, n in self.kept.items() if n == 0]

    def results(self) -> Iterator[dict[str, Any]]:
        """One stats record per group and field; groups in order of first appearance. A group
        whose every record the flag filter left out is still reported, with n 0 and null
        statistics for every field: it never vanishes from the output."""
        for group, per_field in self.values.items():
            shown = dict(zip(self.by, (value for _, value in group)))
            for name in self.fields:
                if name in per_field or self.kept.get(group) == 0:
                    what = f"field {name!r}" + "".join(f", {k} {v!r:.60}" for k, v in shown.items())
                    yield new_record(KIND, **shown, field=name, **summarize(per_field.get(name, []), what))


def _kind_of(value: Any) -> str:
    if _is_number(value):
        return "a number"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "a list"


def collect(records: Iterable[tuple[str, int, dict[str, Any]]], by: list[str],
            fields: list[str] | None, flag_filter: FlagFilter | None = None) -> GroupedStats:
    """Group numeric values; error records are counted and skipped.

    A record tagged with the ``schema`` of a monolayer kind (``monolayer.eval/1``) is
    checked as that kind first (``iou`` of 5 is a :class:`DataError`); untagged records
    are free-form. Without ``fields``, every numeric field of the records is summarised. A field
    that holds numbers in some records and something else (not null) in others is
    a :class:`DataError` naming ``file:line``, with or without ``fields``: a value
    is never dropped silently. A record lacking a field (or holding null)
    contributes nothing to it. A grouping key must hold a string, number,
    boolean or null, never an object or a list. ``flag_filter`` leaves records out by
    their quality flags (counted in ``filtered_out``; error records are skipped first); a
    group it empties keeps its place (see :meth:`GroupedStats.results`).
    """
    keys = [parse_key(spec) for spec in by]
    result = GroupedStats(by=list(by), fields=list(fields or []))
    auto = not fields
    # field -> (kind of its first non-null value, where it was seen)
    seen: dict[str, tuple[str, str]] = {}
    for source, number, record in records:
        where = f"{source}:{number}"
        check_tagged(record, where)
        if "error" in record:
            result.error_records += 1
            continue
        group = []
        for spec, (name, transform) in zip(by, keys):
            value = record.get(name)
            if isinstance(value, (dict, list)):
                raise DataError(f"{where}: --by {spec}: field {name!r} is {_kind_of(value)}, not a value "
                                "to group by", "group by a field holding a string or number")
            group.append(group_key(key_value(record, name, transform)))
        per_field = result.values.setdefault(tuple(group), {})
        result.kept.setdefault(tuple(group), 0)
        if flag_filter is not None and flag_filter.active:
            result.without_flags += not isinstance(record.get("flags"), list)
            if not flag_filter.keeps(record):
                result.filtered_out += 1
                continue
        result.records += 1
        result.kept[tuple(group)] += 1
        names = [k for k in record if k not in by] if auto else result.fields
        for name in names:
            value = record.get(name)
            if value is None:
                continue
            kind = _kind_of(value)
            first = seen.setdefault(name, (kind, where))
            if kind != first[0] and "a number" in (kind, first[0]):
                raise DataError(f"{where}: field {name!r} is {value!r:.60}, but {first[1]} holds a number there"
                                if kind != "a number" else
                                f"{where}: field {name!r} is a number, but {first[1]} holds {first[0]} there",
                                "a field must hold numbers in every record (or null)")
            if not _is_number(value):
                if not auto:
                    raise DataError(f"{where}: field {name!r} is {value!r}, not a number")
                continue
            number = finite_float(value, where, name)  # 1e999 reads as inf; 10**400 has no float
            if auto and name not in result.fields:
                result.fields.append(name)
            per_field.setdefault(name, []).append(number)
    return result
