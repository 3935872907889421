"""Image-quality measures and flags on the development images and on degraded versions of them.

The constants of :mod:`monolayer.qc` (thresholds and ``DEV_REFERENCE``) come from
this script. For every image in ``/work/shared/data/real-dev`` (or ``--data``;
LIVECell 704 x 520 8-bit phase contrast, Usiigaci 16-bit fibroblasts) it measures
the original and seven degraded versions, made in the stored dtype:

* ``blur4``: Gaussian blur, sigma 4 px;
* ``blur3n``: Gaussian blur, sigma 3 px, then the image's own pixel noise added back
  (a real defocused image keeps its camera noise);
* ``overexposed``: scaled so that the 90th percentile reaches the dtype's top, clipped;
* ``cliphot``: clipped at its own 95th percentile (below the dtype's top, as 12-bit data
  in a 16-bit file clips at 4095), with two hot pixels at the dtype's top;
* ``ramp``: multiplied by a left-to-right ramp 0.7 .. 1.3;
* ``empty``: flat at the median, plus Gaussian noise of the image's noise sigma;
* ``noise``: the median plus Gaussian noise of the image's standard deviation.

It prints the measures and flags of each, a summary (the range of every measure per
version, which flags fired how often), a leave-one-out check of
``unlike_calibration`` (a reference from the other images of the same source must
accept the held-out image; one from the other source must flag it), the time per
measure, and the ``DEV_REFERENCE`` to embed. Nothing is asserted.

Usage::

    python benchmarks/qc_dev.py [--data DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from monolayer import qc

VERSIONS = ("original", "blur4", "blur3n", "overexposed", "cliphot", "ramp", "empty", "noise")
EXPECTED = {"original": set(), "blur4": {"out_of_focus"}, "blur3n": {"out_of_focus"},
            "overexposed": {"saturated"}, "cliphot": {"saturated"}, "ramp": {"uneven_illumination"}, "empty": {"no_texture"},
            "noise": {"no_texture"}}


def noise_sigma(image: np.ndarray) -> float:
    return qc._noise_sigma(image.astype(np.float32))


def degrade(image: np.ndarray, version: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` (integer dtype) degraded as named, in its own dtype."""
    info = np.iinfo(image.dtype)
    f = image.astype(np.float64)
    median = float(np.median(f))
    if version == "original":
        return image
    if version == "blur4":
        f = ndi.gaussian_filter(f, 4)
    elif version == "blur3n":
        f = ndi.gaussian_filter(f, 3) + rng.normal(0, noise_sigma(image), f.shape)
    elif version == "overexposed":
        f = f * info.max / np.percentile(f, 90)
    elif version == "cliphot":
        f = np.minimum(f, np.percentile(f, 95))
        f[0, 0] = f[-1, -1] = info.max  # two hot pixels above the clipping level
    elif version == "ramp":
        f = f * np.linspace(0.7, 1.3, f.shape[1])[None, :]
    elif version == "empty":
        f = median + rng.normal(0, max(noise_sigma(image), 1.0), f.shape)
    elif version == "noise":
        f = median + rng.normal(0, f.std(), f.shape)
    return np.clip(np.round(f), info.min, info.max).astype(image.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/real-dev"))
    parser.add_argument("--quiet", action="store_true", help="summary only")
    args = parser.parse_args()
    files = sorted(args.data.glob("*/images/*.tif"))
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[str, str, dict[str, float]]]] = {v: [] for v in VERSIONS}
    times: list[float] = []
    names = None
    for path in files:
        image = tifffile.imread(path)
        source = path.parent.parent.name
        for version in VERSIONS:
            degraded = degrade(image, version, rng)
            gray = degraded.astype(np.float32)
            started = time.perf_counter()
            m = qc.measure(gray, degraded.dtype)
            if version == "original" and source == "livecell":
                times.append(time.perf_counter() - started)
            rows[version].append((source, path.name, m))
            names = list(m)
            if not args.quiet:
                raised = qc.flags(m, None)
                print(f"{version:11s} {path.name[:24]:24s} " + " ".join(f"{k}={v:.3g}" for k, v in m.items())
                      + f"  {','.join(raised) or '-'}")

    print("\n# range of each measure (min .. max) per version")
    print(f"{'version':11s} " + " ".join(f"{n:>16s}" for n in names))
    for version in VERSIONS:
        cells = []
        for n in names:
            values = [m[n] for _, _, m in rows[version]]
            cells.append(f"{min(values):.3g}..{max(values):.3g}")
        print(f"{version:11s} " + " ".join(f"{c:>16s}" for c in cells))

    print("\n# flags (no reference): count per version, and images whose flags differ from what is expected")
    for version in VERSIONS:
        counts: dict[str, int] = {}
        wrong = []
        for source, name, m in rows[version]:
            raised = set(qc.flags(m, None))
            for f in raised:
                counts[f] = counts.get(f, 0) + 1
            if raised != EXPECTED[version]:
                wrong.append(f"{name}:{','.join(sorted(raised)) or '-'}")
        print(f"{version:11s} n={len(rows[version])} {counts}  unexpected: {wrong or 'none'}")

    originals = rows["original"]
    by_source: dict[str, list[dict[str, float]]] = {}
    for source, _, m in originals:
        by_source.setdefault(source, []).append(m)
    print("\n# unlike_calibration, leave one out within each source (should be quiet)")
    for i, (source, name, m) in enumerate(originals):
        others = [o for j, (s, _, o) in enumerate(originals) if s == source and j != i]
        outside = qc.unlike(m, qc.reference_from(others))
        if outside:
            print(f"  {name}: outside {outside}")
    print("  (every image not listed is inside)")
    print("# unlike_calibration, reference from the other source (should fire)")
    for source, measures in by_source.items():
        for other, reference_measures in by_source.items():
            if other == source:
                continue
            reference = qc.reference_from(reference_measures)
            fired = sum(bool(qc.unlike(m, reference)) for m in measures)
            print(f"  {source} against a {other} reference: {fired}/{len(measures)} flagged")
    print("# unlike_calibration, reference from 3 images of one well at one time's density")
    skov = [(n, m) for s, n, m in originals if n.startswith("SKOV3_Phase_E4")]
    if len(skov) == 2:
        print(f"  SKOV3 E4 {skov[0][0]} vs {skov[1][0]}: outside {qc.unlike(skov[1][1], qc.reference_from([skov[0][1]]))}"
              f" / {qc.unlike(skov[0][1], qc.reference_from([skov[1][1]]))}")
    print("# unlike_calibration with a reference from k random images of one source (200 draws each):")
    print("#   false alarms on the rest of that source, detections on the other source")
    draw = np.random.default_rng(1)
    for source, measures in by_source.items():
        other = [m for s, ms in by_source.items() if s != source for m in ms]
        for k in (1, 2, 3, 5):
            false_alarms = detections = tested = 0
            for _ in range(200):
                chosen = set(draw.choice(len(measures), size=k, replace=False).tolist())
                reference = qc.reference_from([measures[i] for i in chosen])
                rest = [m for i, m in enumerate(measures) if i not in chosen]
                false_alarms += sum(bool(qc.unlike(m, reference)) for m in rest)
                tested += len(rest)
                detections += sum(bool(qc.unlike(m, reference)) for m in other)
            print(f"  {source} k={k}: false alarms {false_alarms / tested:.3f}, "
                  f"detections {detections / (200 * len(other)):.3f}")
    dev_reference = qc.reference_from([m for _, _, m in originals])
    if dev_reference != qc.DEV_REFERENCE:
        print("# NOTE: DEV_REFERENCE in monolayer/qc.py differs from the one printed below: update it")
    print("# the degraded versions against DEV_REFERENCE (count flagged unlike_calibration)")
    for version in VERSIONS:
        fired = sum(bool(qc.unlike(m, dev_reference)) for _, _, m in rows[version])
        print(f"  {version:11s} {fired}/{len(rows[version])}")

    repeat = []
    sample = tifffile.imread(files[0]) if files else None
    if sample is not None:
        gray = sample.astype(np.float32)
        for _ in range(30):
            started = time.perf_counter()
            qc.measure(gray, sample.dtype)
            repeat.append(time.perf_counter() - started)
        print(f"\n# time of measure on {sample.shape[1]}x{sample.shape[0]} {sample.dtype}: "
              f"median {statistics.median(repeat) * 1e3:.2f} ms, min {min(repeat) * 1e3:.2f} ms (30 runs)")
    print("\nDEV_REFERENCE =", json.dumps(dev_reference))


if __name__ == "__main__":
    main()
