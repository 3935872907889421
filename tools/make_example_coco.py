#!/usr/bin/env python3
"""Make examples/usiigaci/annotations.json (COCO polygons) from the shipped instance masks.

Each instance's outline is traced with marching squares at level 0.5 and
simplified by 0.5 px; an instance in several pieces gets one polygon per piece.
Run from the repository root: python tools/make_example_coco.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from skimage import measure

ROOT = Path(__file__).resolve().parent.parent / "examples" / "usiigaci"


def polygons(mask: np.ndarray) -> list[list[float]]:
    padded = np.pad(mask, 1).astype(np.float32)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, 0.5) - 1.0
        if len(contour) < 3:
            continue
        xy = np.clip(contour[:, ::-1], 0, None)
        out.append([round(float(v), 2) for v in xy.ravel()])
    return out


def main() -> None:
    images, annotations = [], []
    for image_id, path in enumerate(sorted((ROOT / "masks").glob("*.tif")), start=1):
        labels = tifffile.imread(path)
        h, w = labels.shape
        images.append({"id": image_id, "file_name": path.name, "width": int(w), "height": int(h)})
        for label in np.unique(labels[labels > 0]):
            mask = labels == label
            polys = polygons(mask)
            if not polys:
                continue
            ys, xs = np.nonzero(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": polys, "area": int(mask.sum()), "iscrowd": 0,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            })
    doc = {
        "info": {"description": "Usiigaci NIH/3T3 phase-contrast examples, polygons traced from "
                                "the instance masks by tools/make_example_coco.py"},
        "licenses": [{"id": 1, "name": "MIT", "url": "https://github.com/oist/Usiigaci/blob/master/LICENSE"}],
        "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
        "images": images,
        "annotations": annotations,
    }
    (ROOT / "annotations.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
