"""Megapixels per second of ``monolayer segment`` (classical, phase) end to end, start-up included.

Generates N phase-contrast-like 8-bit images (default 60 at 704 x 520, LIVECell's
frame size, with :func:`nightly.make_image`), or takes them from ``--from DIR``
(8-bit images, e.g. LIVECell's, cropped or tiled to the size and varied so no two
files are equal), then runs the ``monolayer`` console script over the folder as the
user would from the shell, each run a fresh process (Python start-up, imports and,
for ``--jobs 2``, the worker pool included), for ``--jobs 1`` and ``--jobs 2``,
``--repeat`` times each, interleaved. Per setting it prints the best and median
seconds and MP/s, the spread, the CPU seconds the run used (all its processes), and
the ratio of the best MP/s to the issue's target (``--target``, 20 MP/s with
``--jobs 2``). Nothing is asserted: on a shared machine read the best and the spread.

Usage::

    python benchmarks/classical_speed.py [--images 60] [--size 704x520] [--repeat 5] [--jobs 1,2]
                                         [--from DIR] [--keep DIR] [--target 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nightly import generate  # noqa: E402

# The console script a user runs (its start-up differs from ``python -m monolayer``: a
# spawned worker would re-run it), next to this interpreter in the virtual environment.
SCRIPT = Path(sys.executable).with_name("monolayer")
MONOLAYER = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "monolayer"]


def run_once(images: Path, out: Path, jobs: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (every process of the run) of one ``segment`` run
    into a fresh output folder, records to a file as a cron job would write them."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(out.with_suffix(".jsonl"), "wb") as records:
        proc = subprocess.run([*MONOLAYER, "segment", str(images), "--out", str(out), "--jobs", str(jobs), "-q"],
                              stdout=records, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"segment --jobs {jobs} failed ({proc.returncode}):\n{proc.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def stage_costs(images: Path, n: int) -> dict[str, float]:
    """Median milliseconds per image, in this process, of: reading and normalising, the
    three scipy Gaussian filters ``segment_phase`` runs (the local mean, the local mean of
    squares, the halo smoothing), and the whole ``segment_phase``."""
    import numpy as np
    from scipy import ndimage as ndi

    from monolayer.backends.phase import PhaseParams, segment_phase
    from monolayer.io.images import normalize, read_image

    params = PhaseParams()
    costs: dict[str, list[float]] = {"read + normalise": [], "Gaussian filters": [], "segment_phase": []}
    for path in sorted(images.glob("*.tif"))[:n]:
        t0 = time.perf_counter()
        a = normalize(np.asarray(read_image(path), dtype=np.float32))
        t1 = time.perf_counter()
        ndi.gaussian_filter(a, params.window_sigma)
        ndi.gaussian_filter(a * a, params.window_sigma)
        ndi.gaussian_filter(a, 1.0)
        t2 = time.perf_counter()
        segment_phase(a, params)
        t3 = time.perf_counter()
        costs["read + normalise"].append(t1 - t0)
        costs["Gaussian filters"].append(t2 - t1)
        costs["segment_phase"].append(t3 - t2)
    return {name: 1000 * statistics.median(v) for name, v in costs.items()}


def take(source: Path, folder: Path, n: int, height: int, width: int) -> None:
    """``n`` 8-bit images of ``height`` x ``width`` from the images in ``source``: cropped
    or tiled to size, flipped in turn, and one grey level of noise added so every file differs."""
    import numpy as np
    import tifffile

    from monolayer.io.images import read_image

    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))
    if not files:
        raise SystemExit(f"--from {source}: no .tif or .png images")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = np.asarray(read_image(files[i % len(files)]))
        if image.ndim != 2 or image.dtype != np.uint8:
            raise SystemExit(f"{files[i % len(files)]}: not an 8-bit grey image")
        image = np.tile(image, (-(-height // image.shape[0]), -(-width // image.shape[1])))[:height, :width]
        turn = i // len(files)
        image = image[::-1] if turn % 2 else image
        image = image[:, ::-1] if turn % 4 >= 2 else image
        noisy = image.astype(np.int16) + rng.integers(-1, 2, image.shape)
        tifffile.imwrite(folder / f"frame{i:05d}.tif", np.clip(noisy, 0, 255).astype(np.uint8))


def main() -> None:
    import tifffile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", default="704x520", help="WIDTHxHEIGHT of the images")
    parser.add_argument("--repeat", type=int, default=5, help="runs per --jobs setting")
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values")
    parser.add_argument("--from", dest="source", type=Path, help="take the images from this folder's "
                        "8-bit images (cropped or tiled to --size) instead of generating them")
    parser.add_argument("--keep", type=Path, help="put the images in (and reuse) this folder")
    parser.add_argument("--target", type=float, default=20.0, help="MP/s the ratio is taken to")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    settings = [int(v) for v in args.jobs.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = args.keep or tmp / "images"
        origin = f"from {args.source}" if args.source else "generated"
        if images.is_dir() and len(list(images.glob("*.tif"))) >= args.images:
            origin = f"reused from {images}"
        else:
            if args.source is not None:
                take(args.source, images, args.images, height, width)
            else:
                generate(images, args.images, height, width)
        # Segment exactly --images files, and count the megapixels they really have (a kept
        # folder may hold more files, or another size, than this run's options say).
        chosen = sorted(images.glob("*.tif"))[: args.images]
        if len(list(images.iterdir())) > len(chosen):
            subset = tmp / "subset"
            subset.mkdir()
            for path in chosen:
                shutil.copy(path, subset)
            images = subset
        sizes = []
        for path in chosen:
            with tifffile.TiffFile(path) as tif:
                sizes.append(tif.pages[0].shape[:2])
        megapixels = sum(h * w for h, w in sizes) / 1e6
        shapes = sorted({f"{w}x{h}" for h, w in sizes})
        # Start-up: a fresh process segmenting one image, less one image's work (below).
        one = tmp / "one"
        one.mkdir()
        shutil.copy(sorted(images.glob("*.tif"))[0], one)
        single = min(run_once(one, tmp / "out1", 1)[0] for _ in range(3))
        costs = stage_costs(images, min(args.images, 20))
        runs: dict[int, list[tuple[float, float]]] = {jobs: [] for jobs in settings}
        for _ in range(args.repeat):
            for jobs in settings:  # interleaved, so a busy spell hits every setting alike
                runs[jobs].append(run_once(images, tmp / "out", jobs))
    print(f"{len(sizes)} images of {', '.join(shapes)} ({megapixels:.1f} MP) "
          f"{origin}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, {args.repeat} runs each of {' '.join(MONOLAYER)} segment, "
          "fresh process per run, start-up included")
    for jobs, results in runs.items():
        seconds = sorted(s for s, _ in results)
        cpu = statistics.median(c for _, c in results)
        best = megapixels / seconds[0]
        print(f"--jobs {jobs}: best {seconds[0]:.2f} s = {best:5.1f} MP/s ({best / args.target:.2f} x the "
              f"{args.target:g} MP/s target); median {statistics.median(seconds):.2f} s = "
              f"{megapixels / statistics.median(seconds):.1f} MP/s; worst {seconds[-1]:.2f} s; "
              f"CPU {cpu:.2f} s (median)")

    # What the masks' own arithmetic allows: segment_phase must keep scipy's Gaussian filters
    # (float64 accumulation, rounded to float32 between the passes) for the masks to stay the
    # same bit for bit, so those filters alone bound the rate, whatever else gets faster.
    print(f"in one process, per image (median of {min(args.images, 20)}): read + normalise "
          f"{costs['read + normalise']:.1f} ms; segment_phase {costs['segment_phase']:.1f} ms, of which its "
          f"Gaussian filters {costs['Gaussian filters']:.1f} ms; a fresh process segmenting 1 image: {single:.2f} s")
    startup = max(single - (costs["read + normalise"] + costs["segment_phase"]) / 1000, 0.0)
    for jobs in settings:
        for name in ("Gaussian filters", "segment_phase"):
            ceiling = megapixels / (startup + len(sizes) * costs[name] / 1000 / jobs)
            print(f"ceiling with --jobs {jobs} if only start-up ({startup:.2f} s) and {name} cost anything: "
                  f"{ceiling:.1f} MP/s ({ceiling / args.target:.2f} x the target)")


if __name__ == "__main__":
    main()
