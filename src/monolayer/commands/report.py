"""``report``: one self-contained HTML page for the morning check.

Everything is inside the one file: pictures are inlined as ``data:`` PNGs, the
style is inline CSS, there is no script and no address outside the file, so it
opens in an offline browser, from a mail attachment or a shared drive. Order:
failures first (what needs a person), then the growth forecasts per group (plot
and table), then one thumbnail per image (its overlay: the mask's outline and the
confluence) with its numbers and flags.

A thumbnail is made from the record's ``overlay`` file when it has one, else from
its image and mask; each file is checked against the SHA-256 its record carries,
and a file that cannot be shown is listed as such, never silently left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monolayer import __version__
from monolayer.errors import DataError, MonolayerError

THUMB_SIDE = 320


@dataclass
class ReportInput:
    """What the report shows, gathered from any mix of monolayer records."""

    failures: list[tuple[str, str, int]] = field(default_factory=list)
    images: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    forecasts: list[dict[str, Any]] = field(default_factory=list)
    other: int = 0
    filtered_out: int = 0
    """Segment records left out by the flag filter (``--exclude-flag``/``--only-flag``)."""
    without_flags: int = 0
    """Segment records with no ``flags`` field while a flag filter was given."""
    filter_text: str = ""
    """The flag filter as options, shown on the page."""
    own_failures: int = 0
    """Problems the report found itself (bad records, pictures it cannot show): exit 1."""


def gather(records: Iterable[tuple[str, int, Any]], flag_filter: Any = None) -> ReportInput:
    """Sort records by kind: failures, segment results, growth forecasts. ``flag_filter``
    (a :class:`~monolayer.commands.stats.FlagFilter`) leaves segment results out by their
    quality flags, as ``stats`` does; failures and forecasts are always shown."""
    from monolayer.schema import check, error_code

    found = ReportInput()
    active = flag_filter is not None and flag_filter.active
    if active:
        found.filter_text = flag_filter.describe()
    for source, number, record in records:
        where = f"{source}:{number}"
        if isinstance(record, DataError):
            found.failures.append((where, str(record), 65))
            found.own_failures += 1
            continue
        schema = str(record.get("schema", ""))
        if "error" in record:
            found.failures.append((str(record.get("image") or record.get("well") or where),
                                   str(record["error"]), error_code(record)))
        elif schema.startswith("monolayer.growth/"):
            try:
                check("growth", record, where)
            except DataError as exc:
                found.failures.append((where, str(exc), 65))
                found.own_failures += 1
                continue
            found.forecasts.append(record)
        elif "mask" in record and (schema.startswith("monolayer.segment/") or not schema):
            try:
                check("segment", record, where, require=("mask",))
            except DataError as exc:
                found.failures.append((where, str(exc), 65))
                found.own_failures += 1
                continue
            if active:
                found.without_flags += not isinstance(record.get("flags"), list)
                if not flag_filter.keeps(record):
                    found.filtered_out += 1
                    continue
            found.images.append((where, record))
        else:
            found.other += 1
    return found


def _png_data_uri(picture: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _resolve(path: str, where: str) -> Path:
    from monolayer.commands.evaluate import resolve

    source = where.rsplit(":", 1)[0]
    return resolve(path, None if source == "<stdin>" else Path(source).parent)


def thumbnail(record: dict[str, Any], where: str) -> str:
    """A small PNG (data URI) of the record's overlay, or of its image and mask."""
    from PIL import Image

    from monolayer.io.images import load_image, normalize, to_grayscale
    from monolayer.io.masks import mask_2d
    from monolayer.io.provenance import load_verified
    from monolayer.overlay import overlay_image

    if record.get("overlay"):
        path = _resolve(record["overlay"], where)
        # One read: checked against its record and through the size limit, like every image.
        picture = load_verified(path, record.get("overlay_sha256"), where, "overlay_sha256", as_stored=False).array
        if picture.ndim != 3 or picture.shape[-1] != 3 or picture.dtype != np.uint8:
            raise DataError(f"{where}: {path} is not an overlay monolayer wrote (8-bit RGB)")
    else:
        mask_path = _resolve(record["mask"], where)
        mask = mask_2d(load_verified(mask_path, record.get("mask_sha256"), where, "mask_sha256").array,
                       mask_path) != 0
        image = load_image(_resolve(str(record.get("image")), where), int(record.get("page") or 0))
        if record.get("image_sha256") and image.sha256 != record["image_sha256"]:
            raise DataError(f"{where}: {record.get('image')} is not the image this record was made from")
        gray = to_grayscale(image.array)
        if mask.shape != gray.shape:
            raise DataError(f"{where}: mask and image differ in size")
        picture = overlay_image(normalize(gray), mask, float(record.get("confluence") or mask.mean()))
    scale = THUMB_SIDE / max(picture.shape[:2])
    if scale < 1:
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        picture = np.asarray(Image.fromarray(picture).resize(size, Image.LANCZOS))
    return _png_data_uri(picture)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#111;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em} h2{font-size:1.2em;margin:1.4em 0 .5em;border-bottom:1px solid #ccc}
.meta{color:#555;font-size:.9em} table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top} th{background:#f2f2f2}
.fail{background:#fdecea} .alert{background:#fff4d6} .grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:%(side)dpx} figure img{width:100%%;border:1px solid #999}
figcaption{font-size:.8em;word-break:break-all} .flag{display:inline-block;background:#ffe08a;border-radius:3px;padding:0 .3em;margin:1px}
.ok{color:#1a7f37} .warn{display:inline-block;background:#d1242f;color:#fff;border-radius:3px;padding:0 .35em;margin-left:.3em}
figure.flagged img{border:3px solid #d1242f}
""" % {"side": THUMB_SIDE}


def thumbnails(found: ReportInput) -> list[str | None]:
    """One thumbnail per image record; a record whose pictures cannot be shown (missing,
    replaced, unreadable) becomes a failure of its own, listed first like every failure."""
    out: list[str | None] = []
    for where, record in found.images:
        try:
            out.append(thumbnail(record, where))
        except (MonolayerError, OSError, ValueError) as exc:
            message = str(exc) if isinstance(exc, MonolayerError) else f"{type(exc).__name__}: {exc}"
            found.failures.append((str(record.get("image") or where), f"cannot show: {message}", 65))
            found.own_failures += 1
            out.append(None)
    return out


def render(found: ReportInput, *, title: str, plot_png: bytes | None = None,
           alert_within: float | None = None) -> str:
    """The report as one HTML document (no script, no external reference)."""
    pictures = thumbnails(found)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>made {dt.datetime.now().isoformat(timespec='minutes')} by monolayer {__version__}: "
             f"{len(found.images)} image(s), {len(found.forecasts)} forecast(s), {len(found.failures)} failure(s)</p>"]
    if found.filter_text:
        parts.append(f"<p class='meta'>{html.escape(found.filter_text)}: {found.filtered_out} image(s) left out"
                     + (f"; {found.without_flags} image record(s) carry no quality flags" if found.without_flags
                        else "") + "</p>")
    parts.append("<h2>Failures</h2>")
    if found.failures:
        parts.append("<table><tr><th>what</th><th>error</th><th>exit code</th></tr>")
        parts += [f"<tr class='fail'><td>{html.escape(w)}</td><td>{html.escape(e)}</td><td>{c}</td></tr>"
                  for w, e, c in found.failures]
        parts.append("</table>")
    else:
        parts.append("<p class='ok'>none</p>")
    parts += _flagged_section(found.images)
    if found.forecasts or plot_png:
        parts.append("<h2>Growth and harvest forecast</h2>")
        if plot_png:
            uri = "data:image/png;base64," + base64.b64encode(plot_png).decode("ascii")
            parts.append(f"<p><img alt='growth curves' src='{uri}' style='max-width:100%'></p>")
        if found.forecasts:
            keys = [k for k in found.forecasts[0] if k not in _GROWTH_FIELDS and k not in ("schema", "version")]
            head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
            parts.append(f"<table><tr>{head}<th>points</th><th>last fitted</th><th>harvest at</th>"
                         "<th>hours to harvest (80 %)</th><th>eta</th><th>doubling h</th><th>flags</th></tr>")
            for r in found.forecasts:
                soon = (alert_within is not None and r.get("hours_to_harvest") is not None
                        and r["hours_to_harvest"] <= alert_within)
                cells = "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys)
                high = r.get("hours_to_harvest_high")
                interval = (f"{_fmt(r.get('hours_to_harvest_low'))}–{_fmt(high)}" if high is not None
                            else f"{_fmt(r.get('hours_to_harvest_low'))} or later")
                flags = "".join(f"<span class='flag'>{html.escape(str(f))}</span>" for f in r.get("flags") or [])
                parts.append(f"<tr class='{'alert' if soon else ''}'>{cells}<td>{_fmt(r.get('n'))}</td>"
                             f"<td>{_fmt(r.get('confluence_last'), 3)}</td><td>{_fmt(r.get('harvest_at'), 2)}</td>"
                             f"<td><b>{_fmt(r.get('hours_to_harvest'))}</b> ({interval})</td>"
                             f"<td>{_fmt(r.get('eta'))}</td><td>{_fmt(r.get('doubling_time_h'))}</td>"
                             f"<td>{flags}</td></tr>")
            parts.append("</table>")
    parts.append("<h2>Images</h2><div class='grid'>")
    for (where, record), picture in zip(found.images, pictures):
        flags = [str(f) for f in record.get("flags") or []]
        caption = [f"<b>{100 * float(record.get('confluence') or 0):.1f} %</b>" + _badge(flags),
                   html.escape(", ".join(f"{label} {record[k]}{unit}" for k, label, unit in _ACQUISITION
                                         if record.get(k) is not None)),
                   html.escape(str(record.get("image")))]
        caption += [f"<span class='flag'>{html.escape(str(f))}</span>" for f in record.get("flags") or []]
        if picture is not None:
            img = f"<img alt='overlay of {html.escape(str(record.get('image')))}' src='{picture}'>"
        else:
            img = "<p class='fail'>cannot show (see Failures)</p>"
        figure = "<figure class='flagged'>" if flags else "<figure>"
        parts.append(f"{figure}{img}"
                     f"<figcaption>{'<br>'.join(c for c in caption if c)}</figcaption></figure>")
    parts.append("</div></body></html>\n")
    return "\n".join(parts)


FLAG_ADVICE = {
    "invalid_pixels": "NaN or infinite pixels: part of the field was not measured; check the file",
    "out_of_focus": "blurred: refocus, or check the number by eye",
    "saturated": "many pixels clipped: lower the exposure or gain",
    "uneven_illumination": "background slope or vignetting: check the lamp and condenser, or flat-field",
    "no_texture": "nothing above the noise: an empty well, or not phase contrast",
    "unlike_calibration": "unlike the images the parameters were made on: calibrate on images like it",
}


def _badge(flags: list[str]) -> str:
    """A warning mark next to a number whose image is flagged."""
    if not flags:
        return ""
    return f"<span class='warn' title='{html.escape(', '.join(flags))}'>&#9888; {len(flags)}</span>"


def _flagged_section(images: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The images whose quality flags say: check this number by eye."""
    flagged = [(record, [str(f) for f in record.get("flags") or []]) for _, record in images]
    flagged = [(record, flags) for record, flags in flagged if flags]
    if not flagged:
        return []
    parts = ["<h2>Flagged images</h2>",
             "<p class='meta'>Each still has its number; check these by eye before trusting it.</p>",
             "<table><tr><th>image</th><th>confluence</th><th>flags</th></tr>"]
    for record, flags in flagged:
        spans = "".join(f"<span class='flag' title='{html.escape(FLAG_ADVICE.get(f, f))}'>{html.escape(f)}</span>"
                        for f in flags)
        parts.append(f"<tr class='alert'><td>{html.escape(str(record.get('image')))}</td>"
                     f"<td>{100 * float(record.get('confluence') or 0):.1f} %{_badge(flags)}</td><td>{spans}</td></tr>")
    parts.append("</table>")
    seen = sorted({f for _, flags in flagged for f in flags}, key=lambda f: list(FLAG_ADVICE).index(f)
                  if f in FLAG_ADVICE else len(FLAG_ADVICE))
    parts.append("<ul class='meta'>" + "".join(f"<li><b>{html.escape(f)}</b>: {html.escape(FLAG_ADVICE[f])}</li>"
                                               for f in seen if f in FLAG_ADVICE) + "</ul>")
    return parts


_ACQUISITION = (("plate", "plate", ""), ("well", "well", ""), ("site", "site", ""), ("time", "at", ""),
                ("elapsed_h", "at", " h"))
_GROWTH_FIELDS = {"n", "t_first", "t_last", "confluence_last", "model", "rate_per_h", "doubling_time_h",
                  "capacity", "harvest_at", "hours_to_harvest", "hours_to_harvest_low",
                  "hours_to_harvest_high", "eta", "fit_rmse", "flags"}
