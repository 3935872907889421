"""Calibrating the phase method on a few labelled images: does it help on the others?

Per source of the development images (LIVECell: one microscope, 7 cell lines;
Usiigaci: one microscope, one cell line), several random splits (fixed seeds):
calibrate on K images (``monolayer.commands.calibrate.calibrate_classical``, the
code ``monolayer calibrate`` runs), then segment the source's other images with the
default and with the calibrated parameters (``segment_phase``, the code ``segment``
runs) and compare mean |confluence error| and mean IoU there. Also printed: the
cross-validated error calibrate reports (its estimate of the held-out error) next
to the held-out error actually measured, and per LIVECell cell line the held-out
errors, to show where the error comes from.

    .venv/bin/python benchmarks/calibrate_dev.py [--data ../shared/data/real-dev] [--splits 5]
        [--k 3,4] [--sources livecell,usiigaci] [--json out.json]

Prints Markdown tables on stdout, progress on stderr. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-dev"


def load_source(data: Path, source: str) -> list[Any]:
    from monolayer.commands.calibrate import labelled_images
    from monolayer.io.inputs import expand_inputs

    items = sorted(expand_inputs([str(data / source / "images")], exclude=None), key=lambda i: i.image)
    truth = [data / "livecell" / "annotations.json"] if source == "livecell" else [data / source / "masks"]
    return labelled_images(items, truth)


def scores(images: list[Any], params: Any) -> list[tuple[float, float]]:
    """(|confluence error|, IoU) per image, by segment's own phase code."""
    from monolayer.backends.phase import segment_phase
    from monolayer.metrics import compare

    out = []
    for x in images:
        mask, _ = segment_phase(x.model_input("percentile"), params)
        m = compare(mask, x.truth)
        out.append((m["abs_confluence_error"], m["iou"]))
    return out


def cell_line(name: str) -> str:
    return Path(name).name.split("_")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--k", default="3,4", help="calibration set sizes, comma-separated")
    parser.add_argument("--sources", default="livecell,usiigaci")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--per-line", action=argparse.BooleanOptionalAction, default=True,
                        help="also calibrate per LIVECell cell line")
    parser.add_argument("--exclude", action="append", default=[], metavar="TEXT",
                        help="leave out images whose name contains TEXT (repeatable), e.g. "
                        "MCF7_Phase_H4, whose labels miss whole cell-covered regions")
    args = parser.parse_args()

    from monolayer.backends.classical import phase_params
    from monolayer.backends.phase import PhaseParams
    from monolayer.commands.calibrate import calibrate_classical

    ks = [int(k) for k in args.k.split(",")]
    rows: list[dict[str, Any]] = []
    per_line: dict[tuple[str, str], list[float]] = defaultdict(list)
    for source in args.sources.split(","):
        images = [x for x in load_source(args.data, source)
                  if not any(text in Path(x.name).name for text in args.exclude)]
        default = scores(images, PhaseParams())
        for k in ks:
            for seed in range(args.splits):
                order = np.random.default_rng(seed).permutation(len(images))
                train, test = sorted(order[:k].tolist()), sorted(order[k:].tolist())
                print(f"{source} k={k} seed={seed}: calibrating on {[Path(images[i].name).name for i in train]}",
                      file=sys.stderr)
                started = time.perf_counter()
                doc = calibrate_classical([images[i] for i in train])
                seconds = time.perf_counter() - started
                chosen = phase_params(doc["params"])
                held = scores([images[i] for i in test], chosen)
                block = doc["calibration"]
                raw = held if block["calibrated"] else scores([images[i] for i in test],
                                                              phase_params(block["fitted_params"]))
                row = {
                    "source": source, "k": k, "seed": seed, "train": [images[i].name for i in train],
                    "params": doc["params"], "seconds": seconds, "calibrated": block["calibrated"],
                    "fit_cv_error": block["fit_cv_abs_confluence_error"],
                    "test_fit_error": float(np.mean([e for e, _ in raw])),
                    "cv_error": block["cv_abs_confluence_error"], "train_error": block["train_abs_confluence_error"],
                    "default_train_error": block["default_abs_confluence_error"],
                    "test_default_error": float(np.mean([default[i][0] for i in test])),
                    "test_default_iou": float(np.mean([default[i][1] for i in test])),
                    "test_error": float(np.mean([e for e, _ in held])),
                    "test_iou": float(np.mean([j for _, j in held])),
                }
                rows.append(row)
                if source == "livecell":
                    for i, (e, _) in zip(test, held):
                        per_line[(cell_line(images[i].name), "calibrated")].append(e)
                        per_line[(cell_line(images[i].name), "default")].append(default[i][0])
                print(f"  {seconds:.1f} s; held-out error {row['test_default_error']:.4f} -> {row['test_error']:.4f}, "
                      f"CV estimate {row['cv_error']:.4f}", file=sys.stderr)

    print("## Per split\n")
    print("| source | K | seed | kept | held-out error: default | calibrated | fit, unguarded | IoU: default "
          "| calibrated | CV estimate | fit CV on the K | default on the K | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kept = "fit" if r["calibrated"] else "default"
        print(f"| {r['source']} | {r['k']} | {r['seed']} | {kept} | {r['test_default_error']:.4f} | "
              f"{r['test_error']:.4f} | {r['test_fit_error']:.4f} | {r['test_default_iou']:.3f} | "
              f"{r['test_iou']:.3f} | {r['cv_error']:.4f} | {r['fit_cv_error']:.4f} | "
              f"{r['default_train_error']:.4f} | {r['seconds']:.0f} |")
    print("\n## Mean over splits\n")
    print("| source | K | splits | held-out error: default | calibrated | fit, unguarded | IoU: default "
          "| calibrated | CV estimate | calibrated better / worse by > 0.005 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["source"], r["k"])].append(r)
    for (source, k), rs in groups.items():
        def m(name: str) -> float:
            return float(np.mean([r[name] for r in rs]))

        better = sum(r["test_error"] < r["test_default_error"] - 0.005 for r in rs)
        worse = sum(r["test_error"] > r["test_default_error"] + 0.005 for r in rs)
        print(f"| {source} | {k} | {len(rs)} | {m('test_default_error'):.4f} | {m('test_error'):.4f} | "
              f"{m('test_fit_error'):.4f} | {m('test_default_iou'):.3f} | {m('test_iou'):.3f} | "
              f"{m('cv_error'):.4f} | {better} / {worse} |")
    if per_line:
        print("\n## LIVECell held-out error by cell line (all splits)\n")
        print("| cell line | n | default | calibrated |")
        print("|---|---|---|---|")
        for line in sorted({line for line, _ in per_line}):
            d, c = per_line[(line, "default")], per_line[(line, "calibrated")]
            print(f"| {line} | {len(d)} | {np.mean(d):.4f} | {np.mean(c):.4f} |")
    if "livecell" in args.sources.split(",") and args.per_line:
        images = load_source(args.data, "livecell")
        print("\n## LIVECell, calibrated per cell line (all its images; the CV error is the held-out one)\n")
        print("| cell line | images | default error | CV error (calibrated without the image) | kept |")
        print("|---|---|---|---|---|")
        for line in sorted({cell_line(x.name) for x in images}):
            mine = [x for x in images if cell_line(x.name) == line]
            if len(mine) < 2:
                continue
            print(f"{line}: calibrating on {len(mine)} images", file=sys.stderr)
            block = calibrate_classical(mine)["calibration"]
            print(f"| {line} | {len(mine)} | {block['default_abs_confluence_error']:.4f} | "
                  f"{block['cv_abs_confluence_error']:.4f} | {'fit' if block['calibrated'] else 'default'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
