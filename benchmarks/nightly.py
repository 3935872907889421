"""Nightly-cron benchmark of ``monolayer segment`` with the default model.

Generates N phase-contrast-like images of a realistic size (default 1000 at
704 x 520, LIVECell's frame size; textured cells with bright halos on a noisy
field, 8-bit TIFF), then runs, each as the user would from the shell, in one go:

1. ``segment`` over the first 100 images, ``--jobs 1``: peak RSS;
2. ``segment`` over all N images, ``--jobs 1``: images per second and peak RSS;
3. ``segment`` over all N images, ``--jobs 2``: images per second;
4. a rerun of (2) with ``--skip-existing`` (nothing new to do): images per second.

It prints the figures and the ratios: RSS(N) / RSS(100) (near 1 means memory
does not grow with the number of images) and speed(--jobs 2) / speed(--jobs 1).

Peak RSS is measured two ways: ``ru_maxrss`` of the largest single process of
the run (exact, from the kernel; each run is started from a fresh intermediate
process so the figure is that run's alone) and the sampled sum over the run's
process tree (every 20 ms from /proc; this is what ``--jobs 2`` costs in total).
Wall time includes Python start-up and, for ``--jobs 2``, starting the workers.
Nothing is asserted: this is a benchmark.

Usage::

    python benchmarks/nightly.py [--images 1000] [--size 704x520] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
MONOLAYER = [sys.executable, "-m", "monolayer"]


def make_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cells of random size and number (a random confluence), halos, noise, uneven light."""
    yy, xx = np.mgrid[:height, :width]
    image = 110.0 + 10.0 * (xx / width) + rng.normal(0, 2.0, (height, width))
    for _ in range(int(rng.integers(5, 80))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        a, b = rng.uniform(8, 30), rng.uniform(6, 18)
        angle = rng.uniform(0, np.pi)
        y0, y1 = max(0, cy - 32), min(height, cy + 32)
        x0, x1 = max(0, cx - 32), min(width, cx + 32)
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
        r = np.sqrt(u * u + v * v)
        patch = image[y0:y1, x0:x1]
        inside = r < 1
        patch[inside] += rng.normal(0, 22, int(inside.sum()))
        patch[(r >= 1) & (r < 1.25)] += 50
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(folder: Path, n: int, height: int, width: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"frame{i:05d}.tif"
        if not path.exists():
            tifffile.imwrite(path, make_image(rng, height, width))


def _tree_rss(pid: int) -> int:
    """Sum of RSS (bytes) over a process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(children.get(current, []))
    return total


# Started in a fresh interpreter so that RUSAGE_CHILDREN covers this one run only.
_LAUNCHER = ("import resource, subprocess, sys, json, time\n"
             "t = time.perf_counter()\n"
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
             "s = time.perf_counter() - t\n"
             "n = sum(1 for l in p.stdout.splitlines() if l.strip())\n"
             "print(json.dumps({'rc': p.returncode, 'seconds': s, 'records': n, "
             "'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "'stderr': p.stderr.decode()[-500:]}))\n")


def measure(args: list[str]) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *MONOLAYER, *args], stdout=subprocess.PIPE,
                            text=True)
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    done.set()
    sampler.join()
    result = json.loads(stdout)
    result["tree_peak_mb"] = peak_tree / 2**20
    result["maxrss_mb"] = result.pop("maxrss_kb") / 1024
    if result["rc"] != 0:
        raise SystemExit(f"run failed ({result['rc']}): {' '.join(args)}\n{result['stderr']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--small", type=int, default=100, help="the smaller run for the RSS ratio")
    parser.add_argument("--size", default="704x520", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = args.keep or tmp / "images"
        started = time.perf_counter()
        generate(images, args.images, height, width)
        print(f"generated {args.images} images of {width}x{height} in {time.perf_counter() - started:.0f} s "
              f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", file=sys.stderr)
        small = tmp / "small"
        small.mkdir()
        for path in sorted(images.glob("*.tif"))[: args.small]:
            os.symlink(path, small / path.name)

        runs = {}
        plan = [
            ("small_j1", [str(small), "--out", str(tmp / "o_small"), "-q"]),
            ("all_j1", [str(images), "--out", str(tmp / "o_j1"), "-q"]),
            ("all_j2", [str(images), "--out", str(tmp / "o_j2"), "--jobs", "2", "-q"]),
            ("rerun_skip", [str(images), "--out", str(tmp / "o_j1"), "--skip-existing", "-q"]),
        ]
        for name, run_args in plan:
            result = measure(["segment", *run_args])
            result["images_per_s"] = result["records"] / result["seconds"]
            runs[name] = result
            print(f"{name:11s} {result['records']:5d} images  {result['seconds']:7.1f} s  "
                  f"{result['images_per_s']:6.2f} img/s  max RSS {result['maxrss_mb']:6.0f} MB  "
                  f"tree peak {result['tree_peak_mb']:6.0f} MB", file=sys.stderr)

    ratios = {
        "rss_ratio_all_vs_small_maxrss": runs["all_j1"]["maxrss_mb"] / runs["small_j1"]["maxrss_mb"],
        "rss_ratio_all_vs_small_tree": runs["all_j1"]["tree_peak_mb"] / runs["small_j1"]["tree_peak_mb"],
        "speedup_jobs2_vs_jobs1": runs["all_j2"]["images_per_s"] / runs["all_j1"]["images_per_s"],
        "speedup_skip_existing_rerun": runs["rerun_skip"]["images_per_s"] / runs["all_j1"]["images_per_s"],
    }
    print("\n| run | images | seconds | images/s | max RSS MB (largest process) | tree peak MB |", file=sys.stderr)
    print("|---|---|---|---|---|---|", file=sys.stderr)
    for name, r in runs.items():
        print(f"| {name} | {r['records']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | "
              f"{r['maxrss_mb']:.0f} | {r['tree_peak_mb']:.0f} |", file=sys.stderr)
    print("", file=sys.stderr)
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
