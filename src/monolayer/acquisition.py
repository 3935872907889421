"""Acquisition metadata of an image: plate, well, site and time, from its file name or its tags.

``segment --name-pattern`` takes a preset or a regular expression with named
groups among ``plate``, ``well``, ``site``, ``time`` (ISO 8601) and
``elapsed_h`` (hours since the start of the experiment):

``incucyte``
    The Incucyte / LIVECell form ``<line>_<channel>_<well>_<site>_<DD>d<HH>h<MM>m_<tile>``,
    e.g. ``A172_Phase_C7_1_00d20h00m_4.tif``: well C7, site 1, elapsed 20 h.
``incucyte-export``
    ``<well>_<site>_<YYYY>y<MM>m<DD>d_<HH>h<MM>m.tif``, e.g. ``B3_1_2024y05m17d_03h00m.tif``.

Without a pattern, ``time`` comes from the TIFF ``DateTime`` tag or the EXIF
``DateTimeOriginal``/``DateTime`` when the file has one, else there is none.
``time_source`` says where a time came from (``name``, ``tiff``, ``exif``). A
file's modification time is never used: copying a folder changes it.

>>> parse_name("A172_Phase_C7_1_00d20h00m_4.tif", compile_pattern("incucyte"))
{'well': 'C7', 'site': 1, 'elapsed_h': 20.0, 'time_source': 'name'}
>>> parse_name("B3_2_2024y05m17d_03h30m.tif", compile_pattern("incucyte-export"))
{'well': 'B3', 'site': 2, 'time': '2024-05-17T03:30:00', 'time_source': 'name'}
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from pathlib import Path
from typing import Any

from monolayer.errors import DataError, UsageError

PRESETS = {
    "incucyte": (r"^(?P<line>[^_]+)_(?P<channel>[^_]+)_(?P<well>[A-Za-z]{1,2}\d{1,3})_(?P<site>\d+)_"
                 r"(?P<days>\d+)d(?P<hours>\d+)h(?P<minutes>\d+)m(?:_(?P<tile>\d+))?$"),
    "incucyte-export": (r"^(?P<well>[A-Za-z]{1,2}\d{1,3})_(?P<site>\d+)_(?P<year>\d{4})y(?P<month>\d{2})m"
                        r"(?P<day>\d{2})d_(?P<hour>\d{2})h(?P<minute>\d{2})m$"),
}
EXAMPLES = {"incucyte": "A172_Phase_C7_1_00d20h00m_4.tif", "incucyte-export": "B3_1_2024y05m17d_03h00m.tif"}
FIELDS = ("plate", "well", "site", "time", "elapsed_h")
"""The named groups a user's pattern may use; they land in the record under these names."""
_HELPER_GROUPS = {"line", "channel", "tile", "days", "hours", "minutes", "year", "month", "day", "hour", "minute"}


def compile_pattern(spec: str) -> re.Pattern[str]:
    """A preset's or a user's regular expression, checked: it must name at least one of
    :data:`FIELDS` and no group outside them (a typo must not be silently ignored)."""
    text = PRESETS.get(spec, spec)
    try:
        # ASCII: \d is 0-9 and \w is [A-Za-z0-9_], so a look-alike digit cannot make a new well.
        pattern = re.compile(text, re.ASCII)
    except re.error as exc:
        raise UsageError(f"--name-pattern {spec!r}: not a regular expression ({exc})",
                         f"use a preset ({', '.join(PRESETS)}) or a regex with named groups") from None
    groups = set(pattern.groupindex)
    allowed = set(FIELDS) | (_HELPER_GROUPS if spec in PRESETS else set())
    unknown = sorted(groups - allowed)
    if unknown:
        raise UsageError(f"--name-pattern: unknown group {unknown[0]!r}",
                         f"name groups among {', '.join(FIELDS)}, e.g. (?P<well>[A-H]\\d+)")
    if not groups & (set(FIELDS) | {"days", "year"}):
        raise UsageError(f"--name-pattern {spec!r} names none of {', '.join(FIELDS)}",
                         "e.g. '(?P<well>[A-H]\\d+)_(?P<site>\\d+)'")
    return pattern


def _number(text: str, what: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{name}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{name}: {what} {text!r} is not a finite number")
    return value


def _iso(text: str, name: str) -> str:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise DataError(f"{name}: time {text!r} is not an ISO 8601 date and time") from None


def parse_name(path: str | Path, pattern: re.Pattern[str], spec: str | None = None) -> dict[str, Any]:
    """The acquisition fields in an image's file name (its stem), or :class:`DataError`
    naming the file when the name does not match: a record without its well would be
    silently left out of every growth curve."""
    name = os.path.basename(str(path))
    stem = re.sub(r"\.(ome\.)?(tiff?|png|jpe?g)$", "", name, flags=re.IGNORECASE)
    match = pattern.match(stem)
    if match is None:
        hint = (f"the {spec} form is like {EXAMPLES[spec]}" if spec in EXAMPLES
                else f"pattern: {pattern.pattern}")
        raise DataError(f"{name}: file name does not match --name-pattern {spec or ''}".rstrip(), hint)
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    out: dict[str, Any] = {}
    if "plate" in groups:
        out["plate"] = groups["plate"]
    if "well" in groups:
        out["well"] = groups["well"].upper()
    if "site" in groups:
        out["site"] = int(groups["site"]) if groups["site"].isdigit() else groups["site"]
    if "time" in groups:
        out["time"] = _iso(groups["time"], name)
    if "elapsed_h" in groups:
        out["elapsed_h"] = _number(groups["elapsed_h"], "elapsed_h", name)
    if "days" in groups:
        hours, minutes = int(groups["hours"]), int(groups["minutes"])
        if hours > 23 or minutes > 59:
            raise DataError(f"{name}: {groups['days']}d{groups['hours']}h{groups['minutes']}m is not a time "
                            "(hours 0-23, minutes 0-59)")
        out["elapsed_h"] = float(int(groups["days"]) * 24 + hours + minutes / 60)
    if "year" in groups:
        try:
            stamp = dt.datetime(int(groups["year"]), int(groups["month"]), int(groups["day"]),
                                int(groups["hour"]), int(groups["minute"]))
        except ValueError as exc:
            raise DataError(f"{name}: the date in the name is not a date ({exc})") from None
        out["time"] = stamp.isoformat()
    if "time" in out or "elapsed_h" in out:
        out["time_source"] = "name"
    return out


def _exif_time(text: Any) -> str | None:
    """``YYYY:MM:DD HH:MM:SS`` (TIFF and EXIF) as ISO 8601, or None."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def tag_time(path: str | Path, page: int = 0) -> dict[str, Any]:
    """``time`` and ``time_source`` from a TIFF ``DateTime`` tag or EXIF, or {} when none.

    Reads tags only (no pixels). A missing or malformed tag is no time, never an error.
    """
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                pages = tif.pages
                tags = pages[page].tags if page < len(pages) else pages[0].tags
                tag = tags.get("DateTime")
                when = _exif_time(tag.value) if tag is not None else None
            return {"time": when, "time_source": "tiff"} if when else {}
        from PIL import Image

        with Image.open(path) as img:
            exif = img.getexif()
            when = None
            if exif:
                when = _exif_time(exif.get_ifd(0x8769).get(36867)) or _exif_time(exif.get(306))
        return {"time": when, "time_source": "exif"} if when else {}
    except Exception:  # a tag we cannot read is simply no time; the pixels are read elsewhere
        return {}
