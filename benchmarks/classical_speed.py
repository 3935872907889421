"""Megapixels per second of ``monolayer segment`` (classical, phase) end to end, start-up included.

Generates N phase-contrast-like 8-bit images (default 60 at 704 x 520, LIVECell's
frame size, with :func:`nightly.make_image`), then runs ``monolayer segment``
over the folder as the user would from the shell, each run a fresh process
(Python start-up, imports and, for ``--jobs 2``, the worker pool included), for
``--jobs 1`` and ``--jobs 2``, ``--repeat`` times each, interleaved. It prints
the median and the range of MP/s per setting. Nothing is asserted: the machine
may be shared, so read the medians.

Usage::

    python benchmarks/classical_speed.py [--images 60] [--size 704x520] [--repeat 5] [--jobs 1,2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nightly import generate  # noqa: E402

MONOLAYER = [sys.executable, "-m", "monolayer"]


def run_once(images: Path, out: Path, jobs: int) -> float:
    """Seconds for one ``segment`` run into a fresh output folder."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run([*MONOLAYER, "segment", str(images), "--out", str(out), "--jobs", str(jobs), "-q"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"segment --jobs {jobs} failed ({proc.returncode}):\n{proc.stderr.decode()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", default="704x520", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--repeat", type=int, default=5, help="runs per --jobs setting (median reported)")
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values")
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    settings = [int(v) for v in args.jobs.split(",")]
    megapixels = args.images * width * height / 1e6

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = args.keep or tmp / "images"
        generate(images, args.images, height, width)
        times: dict[int, list[float]] = {jobs: [] for jobs in settings}
        for _ in range(args.repeat):
            for jobs in settings:  # interleaved, so a busy spell hits every setting alike
                times[jobs].append(run_once(images, tmp / "out", jobs))
    print(f"{args.images} images of {width}x{height} ({megapixels:.1f} MP), {os.cpu_count()} cores, "
          f"{args.repeat} runs each, fresh process per run")
    for jobs, seconds in times.items():
        rates = sorted(megapixels / s for s in seconds)
        print(f"--jobs {jobs}: median {statistics.median(rates):5.1f} MP/s "
              f"({megapixels / statistics.median(seconds):.1f} from median seconds "
              f"{statistics.median(seconds):.2f} s; range {rates[0]:.1f}-{rates[-1]:.1f} MP/s)")


if __name__ == "__main__":
    main()
