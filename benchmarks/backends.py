"""CPU benchmark of monolayer's learned backends (SAM, Cellpose, U-Net, Mask R-CNN).

For each backend it measures, over N images (the example images in
examples/usiigaci/images/*.tif, cycled; optionally downscaled with --size):

(a) seconds per image and peak RSS with the model loaded ONCE for all N images;
(b) seconds per image and peak RSS with the backend built anew for EVERY image
    (weights read, checked and loaded per image, as the paper authors' app did);
(c) the ratio (b)/(a) of seconds per image;
(d) fp32 vs bf16 (model loaded once, same images): seconds per image for each,
    the speed ratio fp32/bf16, the mean IoU between the bf16 and fp32 masks and
    the mean absolute difference of the probability maps.

Real pretrained weights are not used (nothing is downloaded): every backend gets
a RANDOMLY INITIALISED model of the real architecture size, saved as a state
dict to a temporary folder and loaded through the backend's own loading code.
The timings therefore show compute cost, NOT accuracy. Where the work after the
network depends on what the network says (Cellpose's flow following, Mask
R-CNN's number of instances), random weights can make it cheaper or dearer
than with trained weights.

Every configuration runs in a fresh subprocess (this script re-invoked with
``--worker CONFIG_JSON``), so peak RSS (the child's own ``ru_maxrss``) is that
configuration's alone. Image reading and normalisation happen before timing
and are not counted. Timings are never asserted: this is a benchmark.

Usage::

    python benchmarks/backends.py                                  # all backends, 20 images
    python benchmarks/backends.py --backends cellpose,unet --images 20 --size 512
    python benchmarks/backends.py --backends sam --images 4 --reload-images 2 --bf16-images 2
    python benchmarks/backends.py --images 20,sam=4 --reload-images 10,sam=2 --json out.json

``--images``, ``--reload-images`` and ``--bf16-images`` take a number, or a
default number followed by ``backend=number`` overrides (``20,sam=4``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "examples" / "usiigaci" / "images").glob("*.tif"))
ALL_BACKENDS = ("sam", "cellpose", "unet", "maskrcnn")
SAVED_OUTPUTS = 3
"""Predictions of the first few images are saved (outside timing) for the fp32/bf16 comparison."""

# Backend-specific options: the paper's settings where the backend has them.
SPECIFIC: dict[str, dict[str, Any]] = {
    "sam": {"mode": "promptless"},
    "cellpose": {"diameter": 30.0},
    "unet": {},
    "maskrcnn": {},
}
FRAMEWORK_MODULES = {
    "sam": ("segment_anything", "segment_anything.utils.transforms"),
    "cellpose": ("cellpose.models", "cellpose.dynamics"),
    "unet": (),
    "maskrcnn": ("torchvision.models.detection",),
}
"""Imported before timing: a one-time per-process cost, not part of loading a model."""
INTERNAL_RESIZE = {
    "sam": "SAM resizes every image to 1024 px (longest side) internally: --size barely changes its cost",
    "maskrcnn": "Mask R-CNN resizes to shorter side 800 (longer <= 1333) internally: "
                "--size barely changes its network cost",
}


# --------------------------------------------------------------------------- worker side


def _rss_now_mb() -> float:
    """Current resident set size of this process (Linux /proc; else peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _prepare_images(n: int, size: int | None) -> list[Any]:
    import numpy as np

    from monolayer.io.images import load_image, normalize, to_grayscale

    distinct = []
    for path in IMAGES[:max(1, min(n, len(IMAGES)))]:
        image = normalize(to_grayscale(load_image(path).array))
        if size is not None and max(image.shape) > size:
            from skimage.transform import resize

            scale = size / max(image.shape)
            shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
            image = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
            image = np.clip(image, 0, 1).astype(np.float32)
        distinct.append(np.ascontiguousarray(image, dtype=np.float32))
    return [distinct[i % len(distinct)] for i in range(n)]


def _make_weights(backend: str, path: Path) -> dict[str, Any]:
    """A random-init state dict of the real architecture size, saved to ``path``."""
    import torch

    torch.manual_seed(0)
    if backend == "sam":
        from segment_anything.build_sam import build_sam_vit_b

        model = build_sam_vit_b(checkpoint=None)
        arch = "SAM ViT-B (segment_anything.build_sam_vit_b)"
    elif backend == "cellpose":
        from cellpose.resnet_torch import CPnet

        model = CPnet([2, 32, 64, 128, 256], 3, 3, mkldnn=False, max_pool=True, diam_mean=30.0)
        arch = "cellpose 3.1 CPnet [2,32,64,128,256], 3 outputs"
    elif backend == "unet":
        from monolayer.backends.unet import UNet

        model = UNet()
        arch = "U-Net base 64, bilinear, 1 input channel"
    elif backend == "maskrcnn":
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
        arch = "torchvision maskrcnn_resnet50_fpn(num_classes=2)"
    else:
        raise ValueError(backend)
    params = sum(p.numel() for p in model.parameters())
    torch.save(model.state_dict(), path)
    return {"architecture": arch, "params": params, "weights_mb": path.stat().st_size / 2**20}


def _build(config: dict[str, Any]) -> Any:
    from monolayer.backends import create_backend
    from monolayer.backends._torch import RuntimeOptions

    runtime = RuntimeOptions(weights=config["weights"], device="cpu", precision=config["precision"],
                             seed=0, batch_size=1)
    return create_backend(config["backend"], runtime=runtime, **SPECIFIC[config["backend"]])


def _save(config: dict[str, Any], index: int, prediction: Any) -> None:
    import numpy as np

    if config.get("save_dir") and index < SAVED_OUTPUTS:
        score = prediction.score if prediction.score is not None else np.zeros(0, np.float32)
        np.savez(Path(config["save_dir"]) / f"{config['name']}_{index}.npz",
                 mask=np.asarray(prediction.mask, bool), score=np.asarray(score, np.float32))


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    threads = int(config.get("threads") or os.cpu_count() or 1)
    import torch

    torch.set_num_threads(threads)
    import logging

    logging.getLogger("cellpose").setLevel(logging.ERROR)
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    if config["mode"] == "weights":
        out.update(_make_weights(config["backend"], Path(config["weights"])))
        out["peak_rss_mb"] = _peak_rss_mb()
        return out

    import importlib

    # Import costs are paid once per process (also by an app that reloads per image): not timed.
    importlib.import_module(f"monolayer.backends.{config['backend']}")
    for module in FRAMEWORK_MODULES[config["backend"]]:
        importlib.import_module(module)
    images = _prepare_images(config["n"], config.get("size"))
    out["image_shape"] = list(images[0].shape)
    out["rss_before_model_mb"] = _rss_now_mb()
    predict_s: list[float] = []
    load_s: list[float] = []
    if config["mode"] == "once":
        t0 = time.perf_counter()
        backend = _build(config)
        load_s.append(time.perf_counter() - t0)
        out["rss_after_load_mb"] = _rss_now_mb()
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            prediction = backend.predict(image)
            predict_s.append(time.perf_counter() - t0)
            _save(config, i, prediction)
            del prediction
        out["describe"] = backend.describe()
    elif config["mode"] == "reload":
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            backend = _build(config)
            t1 = time.perf_counter()
            prediction = backend.predict(image)
            t2 = time.perf_counter()
            load_s.append(t1 - t0)
            predict_s.append(t2 - t1)
            _save(config, i, prediction)
            del prediction, backend  # as an app whose backend goes out of scope per image
            gc.collect()
    else:
        raise ValueError(config["mode"])
    out["load_s"] = load_s
    out["predict_s"] = predict_s
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# --------------------------------------------------------------------------- parent side


def _per_backend(text: str, flag: str) -> dict[str, int]:
    """``"20"`` or ``"20,sam=4"`` -> {backend: n} (``"default"`` holds the default)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "=" in part:
                name, value = part.split("=", 1)
                if name not in ALL_BACKENDS:
                    raise ValueError
                out[name] = int(value)
            else:
                out["default"] = int(part)
        except ValueError:
            raise SystemExit(f"{flag}: cannot read {part!r} (a number, or backend=number)") from None
    return out


def _pick(table: dict[str, int], backend: str, fallback: int) -> int:
    return table.get(backend, table.get("default", fallback))


def _run_worker(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its result, or an error record."""
    result_path = tmp / f"result_{config['name']}.json"
    config = {**config, "result": str(result_path)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.exists():
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit {proc.returncode}",
                "stderr_tail": "\n".join(lines[-15:]), "wall_s": wall}
    result = json.loads(result_path.read_text())
    result["wall_s"] = wall
    return result


def _compare(tmp: Path, a: str, b: str, n: int) -> dict[str, Any]:
    """Mean IoU of masks and mean |difference| of score maps between saved outputs a and b."""
    import numpy as np

    ious, diffs = [], []
    for i in range(n):
        pa, pb = tmp / f"{a}_{i}.npz", tmp / f"{b}_{i}.npz"
        if not (pa.exists() and pb.exists()):
            break
        with np.load(pa) as x, np.load(pb) as y:
            union = np.logical_or(x["mask"], y["mask"]).sum()
            inter = np.logical_and(x["mask"], y["mask"]).sum()
            ious.append(1.0 if union == 0 else float(inter / union))  # both empty: identical
            if x["score"].size and x["score"].shape == y["score"].shape:
                diffs.append(float(np.abs(x["score"] - y["score"]).mean()))
    return {"images": len(ious), "mean_iou": float(np.mean(ious)) if ious else None,
            "min_iou": float(np.min(ious)) if ious else None,
            "mean_abs_score_diff": float(np.mean(diffs)) if diffs else None}


def _summ(result: dict[str, Any]) -> dict[str, Any]:
    """Per-image seconds from a worker's result."""
    import numpy as np

    if "error" in result:
        return {}
    pred = np.asarray(result["predict_s"])
    load = np.asarray(result["load_s"])
    n = len(pred)
    out = {"n": n, "predict_s_per_image": float(pred.mean()), "predict_s_median": float(np.median(pred)),
           "first_predict_s": float(pred[0]), "load_s_total": float(load.sum()),
           "peak_rss_mb": result["peak_rss_mb"]}
    # Wall-clock seconds per image including model loading (amortised over N when loaded once).
    out["s_per_image"] = float((pred.sum() + load.sum()) / n)
    return out


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS),
                        help="comma-separated subset of sam,cellpose,unet,maskrcnn (default: all)")
    parser.add_argument("--images", default="20",
                        help="N images for the load-once runs (a) and (d): N or N,backend=M,... (default 20)")
    parser.add_argument("--reload-images", default=None,
                        help="images for the reload-per-image run (b); same syntax (default: --images)")
    parser.add_argument("--bf16-images", default=None,
                        help="images for the bf16 run (d); same syntax; 0 skips it (default: --images)")
    parser.add_argument("--size", type=int, default=None,
                        help="downscale each image so its longest side is PX (default: full 1024x1022)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in each worker (default: os.cpu_count())")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        config = json.loads(args.worker)
        result = _worker(config)
        Path(config["result"]).write_text(json.dumps(result))
        return 0

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(ALL_BACKENDS)}")
    if not IMAGES:
        parser.error(f"no example images found under {ROOT / 'examples/usiigaci/images'}")
    if args.size is not None and args.size < 32:
        parser.error("--size must be at least 32 px")
    n_once = _per_backend(args.images, "--images")
    n_reload = _per_backend(args.reload_images, "--reload-images") if args.reload_images else n_once
    n_bf16 = _per_backend(args.bf16_images, "--bf16-images") if args.bf16_images else n_once
    threads = args.threads or os.cpu_count() or 1

    import importlib.util

    from monolayer.backends import BACKENDS

    report: dict[str, Any] = {
        "note": "random-init weights of the real architectures: timings show compute cost, not accuracy",
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
        "images": [str(p.relative_to(ROOT)) for p in IMAGES], "size": args.size,
        "loadavg_start": _loadavg(), "argv": sys.argv[1:], "backends": {},
    }
    try:
        import torch  # only for the version line; workers do the work

        report["torch"] = torch.__version__
    except ImportError:
        report["torch"] = None
    start = time.perf_counter()
    print(f"monolayer backend benchmark: CPU, torch {report['torch']}, {threads} thread(s), "
          f"os.cpu_count()={os.cpu_count()}, loadavg {report['loadavg_start']}")
    print("NOTE: random-init weights of the real architecture sizes -> timings show compute cost, "
          "not accuracy; masks/IoU say nothing about segmentation quality.")

    with tempfile.TemporaryDirectory(prefix="monolayer-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name in backends:
            entry: dict[str, Any] = {"runs": {}}
            report["backends"][name] = entry
            spec = BACKENDS[name]
            problem = None
            if spec.target is None:
                problem = "not built in this version"
            elif spec.missing():
                problem = f"needs {', '.join(spec.missing())}"
            elif importlib.util.find_spec(spec.target.split(":")[0]) is None:
                problem = f"module {spec.target.split(':')[0]} is missing"
            if problem:
                entry["skipped"] = problem
                print(f"\n[{name}] SKIPPED: {problem}", flush=True)
                continue
            weights = tmp / f"{name}_random.pth"
            made = _run_worker({"name": f"{name}_weights", "backend": name, "mode": "weights",
                                "weights": str(weights), "threads": threads}, tmp)
            entry["weights"] = made
            if "error" in made:
                entry["skipped"] = f"cannot build random weights: {made['error']}"
                print(f"\n[{name}] SKIPPED: {entry['skipped']}\n{made.get('stderr_tail', '')}", flush=True)
                continue
            print(f"\n[{name}] {made['architecture']}: {made['params'] / 1e6:.1f} M params, "
                  f"state dict {made['weights_mb']:.0f} MB (random init)", flush=True)
            plan = [("once_fp32", "once", "fp32", _pick(n_once, name, 20)),
                    ("reload_fp32", "reload", "fp32", _pick(n_reload, name, 20)),
                    ("once_bf16", "once", "bf16", _pick(n_bf16, name, 20))]
            for label, mode, precision, n in plan:
                if n <= 0:
                    continue
                config = {"name": f"{name}_{label}", "backend": name, "mode": mode, "precision": precision,
                          "weights": str(weights), "n": n, "size": args.size, "threads": threads,
                          "save_dir": str(tmp)}
                print(f"  running {label} on {n} image(s) ...", end=" ", flush=True)
                result = _run_worker(config, tmp)
                result["summary"] = _summ(result)
                entry["runs"][label] = result
                if "error" in result:
                    print(f"FAILED: {result['error']}", flush=True)
                    print("    " + result.get("stderr_tail", "").replace("\n", "\n    "), flush=True)
                else:
                    s = result["summary"]
                    print(f"{s['predict_s_per_image']:.2f} s/image predict, "
                          f"{s['s_per_image']:.2f} s/image with loading, "
                          f"peak RSS {s['peak_rss_mb']:.0f} MB, image {result['image_shape']} "
                          f"({result['wall_s']:.0f} s wall)", flush=True)
            runs = entry["runs"]
            ok = {k: v["summary"] for k, v in runs.items() if "error" not in v}
            derived: dict[str, Any] = {}
            if "once_fp32" in ok and "reload_fp32" in ok:
                derived["reload_over_once"] = ok["reload_fp32"]["s_per_image"] / ok["once_fp32"]["s_per_image"]
                derived["reload_over_once_predict_only"] = (ok["reload_fp32"]["s_per_image"]
                                                            / ok["once_fp32"]["predict_s_per_image"])
                derived["reload_vs_once_outputs"] = _compare(tmp, f"{name}_once_fp32", f"{name}_reload_fp32",
                                                             SAVED_OUTPUTS)
            if "once_fp32" in ok and "once_bf16" in ok:
                derived["fp32_over_bf16_speed"] = (ok["once_fp32"]["predict_s_per_image"]
                                                   / ok["once_bf16"]["predict_s_per_image"])
                derived["bf16_vs_fp32"] = _compare(tmp, f"{name}_once_fp32", f"{name}_once_bf16", SAVED_OUTPUTS)
            entry["derived"] = derived
            if args.json:  # keep what is done so far if a later backend is interrupted
                report["elapsed_s"] = time.perf_counter() - start
                args.json.write_text(json.dumps(report, indent=2))

    report["elapsed_s"] = time.perf_counter() - start
    report["loadavg_end"] = _loadavg()
    _print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nraw results: {args.json}")
    return 0


def _print_table(report: dict[str, Any]) -> None:
    print(f"\n=== Results (CPU, {report['threads']} torch threads, images from {len(report['images'])} "
          f"example .tif cycled, --size {report['size'] or 'none (full size)'}) ===")
    print("random-init weights: compute cost only, not accuracy. s/img = mean per image; "
          "'+load' adds model loading (once: amortised over N).")
    head = (f"{'backend':<9} {'run':<12} {'N':>3} {'image':>9} {'load s':>7} {'1st pred':>8} {'predict':>8} "
            f"{'s/img+load':>10} {'base MB':>7} {'peak RSS MB':>11}")
    print(head)
    print("-" * len(head))
    for name, entry in report["backends"].items():
        if "skipped" in entry:
            print(f"{name:<9} SKIPPED: {entry['skipped']}")
            continue
        for label, result in entry["runs"].items():
            if "error" in result:
                print(f"{name:<9} {label:<12} FAILED: {result['error'][:80]}")
                continue
            s = result["summary"]
            shape = "x".join(str(v) for v in result["image_shape"])
            print(f"{name:<9} {label:<12} {s['n']:>3} {shape:>9} {s['load_s_total'] / max(1, len(result['load_s'])):>7.2f} "
                  f"{s['first_predict_s']:>8.2f} {s['predict_s_per_image']:>8.2f} {s['s_per_image']:>10.2f} "
                  f"{result['rss_before_model_mb']:>7.0f} {s['peak_rss_mb']:>11.0f}")
    print("('load s' is per load: one load for 'once', the mean of the N loads for 'reload'; '1st pred' is the\n"
          " first image's predict time (includes warm-up); 'predict' the mean over all N; 'base MB' the RSS\n"
          " after imports and images, before any model; peak RSS is the worker process's ru_maxrss)")

    print("\n(a)/(b)/(c): load once vs reload per image; (d): fp32 vs bf16 (loaded once, same images)")
    head = (f"{'backend':<9} {'(a) s/img':>9} {'(b) s/img':>9} {'(c) b/a':>7} {'(a) RSS':>7} {'(b) RSS':>7} "
            f"{'fp32 s/img':>10} {'bf16 s/img':>10} {'fp32/bf16':>9} {'IoU':>6} {'mean|dp|':>8}")
    print(head)
    print("-" * len(head))
    for name, entry in report["backends"].items():
        if "skipped" in entry:
            continue
        runs, derived = entry["runs"], entry.get("derived", {})
        get = lambda label, key: runs.get(label, {}).get("summary", {}).get(key)  # noqa: E731
        cmp = derived.get("bf16_vs_fp32", {})
        print(f"{name:<9} {_fmt(get('once_fp32', 's_per_image')):>9} {_fmt(get('reload_fp32', 's_per_image')):>9} "
              f"{_fmt(derived.get('reload_over_once')):>7} {_fmt(get('once_fp32', 'peak_rss_mb'), '.0f'):>7} "
              f"{_fmt(get('reload_fp32', 'peak_rss_mb'), '.0f'):>7} "
              f"{_fmt(get('once_fp32', 'predict_s_per_image')):>10} {_fmt(get('once_bf16', 'predict_s_per_image')):>10} "
              f"{_fmt(derived.get('fp32_over_bf16_speed')):>9} {_fmt(cmp.get('mean_iou'), '.4f'):>6} "
              f"{_fmt(cmp.get('mean_abs_score_diff'), '.4f'):>8}")
    print("(a) includes the one load amortised over N; (b) includes a full backend construction per image; "
          "RSS in MB;\nIoU / mean|dp| compare bf16 with fp32 masks / probability maps on the first "
          f"{SAVED_OUTPUTS} (distinct) images.")
    notes = [INTERNAL_RESIZE[n] for n in report["backends"] if n in INTERNAL_RESIZE and report["size"]]
    for name, entry in report["backends"].items():
        check = entry.get("derived", {}).get("reload_vs_once_outputs")
        if check and check.get("mean_iou") is not None and check["mean_iou"] < 1.0:
            notes.append(f"{name}: reload and load-once outputs differ (mean IoU {check['mean_iou']:.4f})")
    for note in notes:
        print(f"note: {note}")
    print(f"total elapsed {report['elapsed_s']:.0f} s; loadavg start {report['loadavg_start']}, "
          f"end {report.get('loadavg_end')}")


if __name__ == "__main__":
    sys.exit(main())
