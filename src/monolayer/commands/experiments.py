"""The paper's experiment statistics: metric by round across repeats, strategy comparisons,
lazy-vs-exact comparisons and the movie-position analysis.

Inputs are evaluate records tagged with ``strategy``, ``repeat`` and ``round``
(``monolayer evaluate ... --tag strategy=entropy --tag repeat=1 --tag round=3``)
and al-round manifests. Outputs are plain records; plotting lives in
:mod:`monolayer.plots`.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.errors import DataError, NoInputError
from monolayer.hypothesis_tests import CORRECTIONS, cliffs_delta, cliffs_magnitude, mann_whitney
from monolayer.records import new_record
from monolayer.schema import check_tagged, finite_float
from monolayer.stats import group_key, summarize
from monolayer.stats import mean as mean_of

KIND = "experiment"


def _number(record: dict[str, Any], name: str, where: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: field {name!r} is {value!r}, not a number")
    return finite_float(value, where, name)


def per_run_means(records: Iterable[tuple[str, int, dict[str, Any]]], metric: str,
                  group: str = "strategy") -> dict[tuple[Any, int], dict[Any, float]]:
    """{(group key, round): {repeat key: mean metric over that run's test images}}.

    Group and repeat keys are ``(type name, value)`` (:func:`~monolayer.stats.group_key`):
    strategy 1 and strategy true are two strategies, repeat 1 and repeat 1.0 two repeats.
    A record tagged with a monolayer ``schema`` is checked as that kind.
    """
    sums: dict[tuple[Any, int, Any], list[float]] = defaultdict(list)
    for source, number, record in records:
        where = f"{source}:{number}"
        check_tagged(record, where)
        if "error" in record:
            continue
        for tag in (group, "round", "repeat"):
            if tag not in record:
                raise DataError(f"{where}: record has no {tag!r} field",
                                f"tag evaluations: monolayer evaluate ... --tag {tag}=VALUE")
        rnd = record["round"]
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
            raise DataError(f"{where}: field 'round' is {rnd!r:.60}, expected a round number (0, 1, ...)")
        for tag in (group, "repeat"):
            if not isinstance(record[tag], (str, int, float, bool)):
                raise DataError(f"{where}: field {tag!r} is {type(record[tag]).__name__}, expected a "
                                "string or number")
        sums[(group_key(record[group]), rnd, group_key(record["repeat"]))].append(
            _number(record, metric, where))
    if not sums:
        raise NoInputError("no evaluation records to summarise")
    out: dict[tuple[Any, int], dict[Any, float]] = defaultdict(dict)
    for (g, rnd, rep), values in sums.items():
        out[(g, rnd)][rep] = mean_of(values, f"{metric!r} of {group} {g[1]!r:.60}, round {rnd}, "
                                             f"repeat {rep[1]!r:.60}")
    return out


def rounds(records: Iterable[tuple[str, int, dict[str, Any]]], metric: str, *, group: str = "strategy",
           correction: str = "holm", alpha: float = 0.05) -> list[dict[str, Any]]:
    """Per round and strategy: n repeats, mean, median, q1, q3, IQR of the per-repeat mean metric;
    per round and pair of strategies: Mann-Whitney U, p, corrected p (over rounds), Cliff's delta."""
    runs = per_run_means(records, metric, group)
    groups = sorted({g for g, _ in runs}, key=lambda g: (str(g[1]), g[0]))
    all_rounds = sorted({r for _, r in runs})
    out = []
    for rnd in all_rounds:
        for g in groups:
            values = list(runs.get((g, rnd), {}).values())
            if values:
                out.append(new_record(KIND, analysis="rounds", record="summary", metric=metric, round=rnd,
                                      **{group: g[1]}, **summarize(values, f"{metric!r} of {group} "
                                                                   f"{g[1]!r:.60}, round {rnd}")))
    for a, b in itertools.combinations(groups, 2):
        tests = []
        for rnd in all_rounds:
            xa, xb = list(runs.get((a, rnd), {}).values()), list(runs.get((b, rnd), {}).values())
            if xa and xb:
                u, p = mann_whitney(xa, xb)
                tests.append((rnd, xa, xb, u, p))
        adjusted = CORRECTIONS[correction]([t[4] for t in tests])
        for (rnd, xa, xb, u, p), p_adj in zip(tests, adjusted):
            delta = cliffs_delta(xa, xb)
            out.append(new_record(KIND, analysis="rounds", record="test", metric=metric, round=rnd,
                                  a=a[1], b=b[1], n_a=len(xa), n_b=len(xb), u=u, p=p, p_adjusted=p_adj,
                                  correction=correction, significant=bool(p_adj < alpha), alpha=alpha,
                                  cliffs_delta=delta, effect=cliffs_magnitude(delta),
                                  test="Mann-Whitney U, two-sided, per round across repeats"))
    return out


def _image(record: dict[str, Any], where: str) -> str:
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: an evaluation record has no 'image' field: {str(record)[:80]}")
    return image


def _metric_by_image(side: Iterable[tuple[str, int, dict[str, Any]]], metric: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for source, number, record in side:
        where = f"{source}:{number}"
        check_tagged(record, where)
        if "error" not in record:
            values[_image(record, where)] = _number(record, metric, where)
    return values


def compare(a: Iterable[tuple[str, int, dict[str, Any]]], b: Iterable[tuple[str, int, dict[str, Any]]],
            metric: str, labels: tuple[str, str]) -> list[dict[str, Any]]:
    """Two evaluations of the same question (e.g. lazy vs exact labels): each summarised, then
    Mann-Whitney U and Cliff's delta, and the mean paired difference over images in both.

    ``a`` and ``b`` are ``(file, line, record)`` as :func:`~monolayer.records.iter_many`
    yields them, so a bad record is named by ``file:line``; a record tagged with a
    monolayer ``schema`` is checked as that kind."""
    va, vb = _metric_by_image(a, metric), _metric_by_image(b, metric)
    if not va or not vb:
        raise NoInputError("both evaluations need at least one record without error")
    u, p = mann_whitney(list(va.values()), list(vb.values()))
    delta = cliffs_delta(list(va.values()), list(vb.values()))
    common = sorted(va.keys() & vb.keys())
    paired = [va[k] - vb[k] for k in common]
    for image, difference in zip(common, paired):
        if not math.isfinite(difference):  # 1e308 - -1e308
            raise DataError(f"{metric!r} of {image!r:.120}: the difference between {labels[0]} and "
                            f"{labels[1]} is beyond the floating-point range (+-1.8e308)")
    out = [new_record(KIND, analysis="compare", record="summary", metric=metric, label=label,
                      **summarize(list(values.values()), f"{metric!r} of {label}"))
           for label, values in zip(labels, (va, vb))]
    out.append(new_record(KIND, analysis="compare", record="test", metric=metric, a=labels[0], b=labels[1],
                          u=u, p=p, cliffs_delta=delta, effect=cliffs_magnitude(delta),
                          paired_images=len(common),
                          mean_paired_difference=mean_of(paired, f"{metric!r} paired differences")
                          if paired else None,
                          test="Mann-Whitney U, two-sided"))
    return out


def movie(manifests: list[Path], *, correction: str = "holm", alpha: float = 0.05) -> list[dict[str, Any]]:
    """Distance in movie position between the images picked in consecutive rounds.

    A frame's position is its index among all images of the manifest sorted by
    name (time-ordered file names), or its ``frame`` field when records have one.
    With several picks per round their mean position is used. The first distance
    is that of round 2 to round 1: round 0 is the random initial set, not a pick.
    """
    distances: dict[tuple[str, int], list[float]] = defaultdict(list)
    for path in manifests:
        from monolayer.al.manifest import Manifest

        doc = Manifest.load(Path(path)).to_json()
        records = doc["train"] + doc["test"] + doc["pool"]
        names = sorted(str(r["image"]) for r in records)
        position = {str(r["image"]): float(r["frame"]) if isinstance(r.get("frame"), (int, float))
                    else float(names.index(str(r["image"]))) for r in records}
        history = [h for h in doc["history"] if h["round"] >= 1]
        for prev, cur in zip(history, history[1:]):
            mean = lambda h: float(np.mean([position[p["image"] if isinstance(p, dict) else p]
                                            for p in h["picked"]]))
            distances[(cur["strategy"], int(cur["round"]))].append(abs(mean(cur) - mean(prev)))
    if not distances:
        raise NoInputError("the manifests hold fewer than two active-learning rounds")
    # Each manifest's distance in a round is one repeat's value for the per-round machinery.
    values = [("manifests", 0, {"strategy": strategy, "round": rnd, "repeat": rep, "distance": d})
              for (strategy, rnd), ds in distances.items() for rep, d in enumerate(ds)]
    out = rounds(values, "distance", correction=correction, alpha=alpha)
    for record in out:
        record["analysis"] = "movie"
    return out
