"""``growth``: group confluence time series from JSON Lines and forecast when each reaches a harvest level.

Records are grouped by ``--by`` keys (a well, a flask); records of one group at
one time (several sites or tiles of a well) are averaged first. The fitting is
:mod:`monolayer.growth`; this module reads and checks the records, builds the
``monolayer.growth/1`` records and the alert lines, and prepares what a plot
shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from monolayer.commands.stats import key_value, parse_key
from monolayer.errors import DataError, UsageError
from monolayer.records import new_record
from monolayer.schema import check_tagged, finite_float, reserved_fields
from monolayer.stats import group_key

KIND = "growth"
WELL = re.compile(r"([A-Pa-p])(\d{1,2})")
_TIME_HINT = "give an ISO 8601 time (2024-05-01T09:30:00) or a number of hours"


@dataclass
class Series:
    """One culture's points: hours -> values (averaged later), and each time as first given."""

    shown: dict[str, Any]
    values: dict[float, list[float]] = field(default_factory=dict)
    given: dict[float, Any] = field(default_factory=dict)
    stamps: dict[float, datetime] = field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        hours = np.array(sorted(self.values))
        return hours, np.array([float(np.mean(self.values[h])) for h in hours])


@dataclass
class Collected:
    """The groups in order of first appearance, what the times were, and what was skipped."""

    series: dict[tuple[tuple[str, Any], ...], Series] = field(default_factory=dict)
    time_kind: str | None = None  # "iso" or "hours"
    origin: datetime | None = None
    error_records: int = 0
    records: int = 0


@dataclass
class Forecast:
    """One group's record, and what the plot and the alert need."""

    record: dict[str, Any]
    series: Series
    fit: Any  # monolayer.growth.GrowthFit, or None with too few points
    hours: np.ndarray
    values: np.ndarray

    @property
    def label(self) -> str:
        shown = self.series.shown
        return " ".join(f"{k}={v}" for k, v in shown.items())

    @property
    def short_label(self) -> str:
        """A plot panel's title: the key's value alone when there is one key."""
        shown = self.series.shown
        return str(next(iter(shown.values()))) if len(shown) == 1 else self.label


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "a list"


def check_options(by: list[str], harvest_at: float, alert_within: float | None) -> None:
    """Usage errors (exit 2) before any input is read."""
    if not (math.isfinite(harvest_at) and 0 < harvest_at < 1):
        raise UsageError(f"--harvest-at {harvest_at:g} is not a confluence between 0 and 1",
                         "give a fraction, e.g. --harvest-at 0.7 for 70 %")
    if alert_within is not None and not (math.isfinite(alert_within) and alert_within >= 0):
        raise UsageError(f"--alert-within {alert_within:g} is not a number of hours", "e.g. --alert-within 24")
    taken = reserved_fields(KIND)
    for spec in by:
        parse_key(spec)
        if spec in taken:
            raise UsageError(f"--by {spec}: growth records have a field of that name",
                             "group by a field with another name")


def _parse_time(value: Any, where: str, name: str) -> tuple[str, float | datetime]:
    if isinstance(value, str):
        try:
            return "iso", datetime.fromisoformat(value.strip())
        except ValueError:
            raise DataError(f"{where}: field {name!r} is {value!r:.60}, not an ISO 8601 time", _TIME_HINT) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "hours", finite_float(value, where, name)
    raise DataError(f"{where}: field {name!r} is {_kind_of(value)}, not a time", _TIME_HINT)


def collect(records: Iterable[tuple[str, int, dict[str, Any]]], by: list[str], time_field: str,
            value_field: str) -> Collected:
    """Group the records' (time, value) points; error records are counted and skipped.

    Every other record must have every ``--by`` field (a string, number, boolean
    or null: never an object or a list), a time (an ISO 8601 string, or a number
    of hours; one kind throughout, and ISO times all with or all without a UTC
    offset) and a value from 0 to 1. Anything else is a :class:`DataError`
    naming ``file:line``.
    """
    keys = [parse_key(spec) for spec in by]
    out = Collected()
    first_time: tuple[str, str] | None = None  # (kind, where)
    for source, number, record in records:
        where = f"{source}:{number}"
        check_tagged(record, where)
        if "error" in record:
            out.error_records += 1
            continue
        out.records += 1
        group = []
        for spec, (name, transform) in zip(by, keys):
            if name not in record:
                raise DataError(f"{where}: the record has no {name!r} field (--by {spec})",
                                "name the field that tells cultures apart with --by, e.g. --by well")
            value = record[name]
            if isinstance(value, (dict, list)):
                raise DataError(f"{where}: --by {spec}: field {name!r} is {_kind_of(value)}, not a value "
                                "to group by", "group by a field holding a string or number")
            group.append(group_key(key_value(record, name, transform)))
        for name in (time_field, value_field):
            if name not in record:
                option = "--time" if name == time_field else "--value"
                raise DataError(f"{where}: the record has no {name!r} field",
                                f"name the field with {option} FIELD")
        kind, when = _parse_time(record[time_field], where, time_field)
        if first_time is None:
            first_time = (kind, where)
        elif kind != first_time[0]:
            raise DataError(f"{where}: field {time_field!r} is {'an ISO time' if kind == 'iso' else 'a number'}, "
                            f"but {first_time[1]} gave {'an ISO time' if first_time[0] == 'iso' else 'a number'}",
                            "use one kind of time throughout")
        out.time_kind = kind
        if isinstance(when, datetime):
            if out.origin is None:
                out.origin = when
            if (when.tzinfo is None) != (out.origin.tzinfo is None):
                raise DataError(f"{where}: field {time_field!r} {'has no' if when.tzinfo is None else 'has a'} "
                                f"UTC offset, unlike {first_time[1]}",
                                "give every time with an offset (2024-05-01T09:30+02:00) or none without")
            hours = (when - out.origin).total_seconds() / 3600.0
        else:
            hours = when
        raw = record[value_field]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            shown = f"{raw!r:.60}" if isinstance(raw, str) else _kind_of(raw)
            raise DataError(f"{where}: field {value_field!r} is {shown}, expected a number from 0 to 1",
                            "name the confluence field with --value FIELD")
        value = finite_float(raw, where, value_field)
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{where}: field {value_field!r} is {raw!r}, expected a number from 0 to 1",
                            "confluence is a fraction: divide percentages by 100")
        key = tuple(group)
        series = out.series.get(key)
        if series is None:
            series = out.series[key] = Series(shown=dict(zip(by, (v for _, v in group))))
        series.values.setdefault(hours, []).append(value)
        series.given.setdefault(hours, record[time_field])
        if isinstance(when, datetime):
            series.stamps.setdefault(hours, when)
    return out


def _round(value: float | None, digits: int) -> float | None:
    # + 0.0: a rate of -0.0 reads as 0
    return None if value is None or not math.isfinite(value) else round(float(value), digits) + 0.0


def _eta(collected: Collected, series: Series, t_last: float, hours: float | None) -> Any:
    if hours is None:
        return None
    if collected.time_kind == "iso":
        stamp = series.stamps[t_last] + timedelta(hours=hours)
        stamp = (stamp + timedelta(seconds=30)).replace(second=0, microsecond=0)
        return stamp.isoformat(timespec="minutes")
    return round(t_last + hours, 2)


def forecast_one(collected: Collected, series: Series, harvest_at: float) -> Forecast:
    """The ``monolayer.growth/1`` record of one group."""
    from monolayer.growth import MIN_POINTS, NOISY_SIGMA, fit_growth

    hours, values = series.arrays()
    t_first, t_last = float(hours[0]), float(hours[-1])
    flags: list[str] = []
    fit = None
    reached = bool(values[-1] >= harvest_at)
    body: dict[str, Any] = {"n": int(hours.size), "t_first": series.given[t_first], "t_last": series.given[t_last],
                            "confluence_last": None, "model": None, "rate_per_h": None, "doubling_time_h": None,
                            "capacity": None, "harvest_at": harvest_at}
    low = high = median = None
    rmse = None
    if hours.size < MIN_POINTS:
        flags.append("too_few_points")
    else:
        fit = fit_growth(hours, values)
        crossing = fit.crossing(harvest_at)
        median, low, high = crossing.hours, crossing.low, crossing.high
        reached = reached or median == 0.0
        capacity = fit.capacity
        known = fit.rate_known
        body.update(confluence_last=_round(fit.level_last, 4), model=fit.model,
                    rate_per_h=_round(fit.rate, 6) if known else None,
                    doubling_time_h=_round(fit.doubling_time, 2) if known else None, capacity=_round(capacity, 4))
        rmse = _round(fit.residual_rmse(), 4)
        if fit.growing_probability < 0.9:
            flags.append("not_growing")
        if capacity is not None and fit.level_last >= 0.95 * capacity:
            flags.append("plateau")
        if not reached and median is None:
            if fit.probability_at_or_above(harvest_at) < 0.5:
                flags.append("above_capacity")
            elif "not_growing" not in flags:
                flags.append("beyond_horizon")
        if fit.noise > NOISY_SIGMA:
            flags.append("noisy")
    if reached:
        flags.insert(1 if flags[:1] == ["too_few_points"] else 0, "reached")
        median = low = high = 0.0
    body.update(hours_to_harvest=_round(median, 2), hours_to_harvest_low=_round(low, 2),
                hours_to_harvest_high=_round(high, 2), eta=_eta(collected, series, t_last, median),
                fit_rmse=rmse, flags=flags)
    return Forecast(record=new_record(KIND, **series.shown, **body), series=series, fit=fit, hours=hours,
                    values=values)


def forecast(collected: Collected, harvest_at: float) -> Iterable[Forecast]:
    """One forecast per group, in order of first appearance (lazily: each is written as it is ready)."""
    for series in collected.series.values():
        try:
            yield forecast_one(collected, series, harvest_at)
        except (ValueError, ArithmeticError) as exc:
            # That group's curve cannot be fitted: an error record for it, the others go on.
            label = " ".join(f"{k}={v}" for k, v in series.shown.items())
            yield Forecast(record=new_record(KIND, **series.shown, error=f"{label}: {exc}", exit_code=65),
                           series=series, fit=None, hours=np.array([]), values=np.array([]))


def alert_line(item: Forecast, alert_within: float) -> str | None:
    """A one-line summary when the group reaches the harvest level within ``alert_within`` hours."""
    r = item.record
    hours = r["hours_to_harvest"]
    if hours is None or hours > alert_within:
        return None
    if "reached" in r["flags"]:
        return (f"{item.label}: at {float(item.values[-1]):.2f} at {r['t_last']}, at or above the harvest "
                f"level {r['harvest_at']:g}")
    high = r["hours_to_harvest_high"]
    span = f"{r['hours_to_harvest_low']:.0f}-{high:.0f} h" if high is not None else \
        f"{r['hours_to_harvest_low']:.0f} h or later"
    return (f"{item.label}: reaches {r['harvest_at']:g} in {hours:.0f} h (80 % interval {span}), "
            f"around {r['eta']}")


def plot_panels(items: list[Forecast], collected: Collected) -> tuple[list[dict[str, Any]], str, str | None]:
    """What each plot panel shows, the x-axis label, and the layout (``"plate"`` or None)."""
    panels = []
    for item in items:
        r = item.record
        t_last = float(item.hours[-1])
        panel: dict[str, Any] = {"label": item.short_label, "x": item.hours, "y": item.values, "flags": r["flags"],
                                 "t_last": t_last, "curve": None}
        for name in ("hours_to_harvest", "hours_to_harvest_low", "hours_to_harvest_high"):
            panel[name] = None if r[name] is None else t_last + r[name]
        if item.fit is not None:
            end = t_last + min(item.fit.horizon, max(r["hours_to_harvest_high"] or r["hours_to_harvest"] or 0.0,
                                                     0.25 * max(item.fit.span, 1.0)) * 1.1)
            grid = np.linspace(float(item.hours[0]), end, 200)
            panel["curve"] = (grid, item.fit.curve(grid))
        panels.append(panel)
    if collected.time_kind == "iso" and collected.origin is not None:
        xlabel = f"hours since {collected.origin.isoformat(timespec='minutes')}"
    else:
        xlabel = "hours"
    wells = [p["label"] for p in panels]
    plate = "plate" if wells and all(isinstance(w, str) and WELL.fullmatch(w) for w in wells) and \
        len(items[0].series.shown) == 1 else None
    return panels, xlabel, plate
