"""How close SAM's image encoder runs to the hardware's matrix-multiply floor, measured in one run.

In one process this measures:

* the GEMM rate in fp32 and bf16 for the encoder's largest matmul shape, the
  MLP's (4096 x 768) @ (768 x 3072) (best of several repeats);
* the ViT-B image encoder's FLOP count for one 1024 x 1024 image
  (``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-add);
* seconds per image of ``monolayer``'s SAM backend (promptless, ViT-B of random
  weights built with ``_build_sam`` at vit_b sizes, saved and loaded through the
  backend's own loading code, fused attention installed) with ``--precision fp32``
  and ``--precision auto``;
* the same promptless pipeline with segment-anything's own, unmodified attention
  (the anchor), in fp32 and bf16 autocast;

and prints each with its ratio to the floor, FLOPs / GEMM rate of the precision it
ran in. The image is a real example (examples/usiigaci/images, stretched to 8 bits,
resized to 1024 x 1024). Random weights: the timings show compute cost, not accuracy.

With CUDA available it also times the encoder alone on the GPU: ViT-B and ViT-H,
batch 1 and 8, bf16 and fp32, fused vs. library attention. Nothing is asserted.

Usage::

    python benchmarks/sam_speed.py                 # 2 timed images per configuration
    python benchmarks/sam_speed.py --images 5
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VIT = {"vit_b": (768, 12, 12, [2, 5, 8, 11]), "vit_h": (1280, 32, 16, [7, 15, 23, 31])}


def gemm_rate(dtype: torch.dtype, device: str = "cpu", repeats: int = 10) -> float:
    """FLOP/s of (4096 x 768) @ (768 x 3072) in ``dtype``: best of ``repeats``."""
    a = torch.randn(4096, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 * 768 * 3072 / best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(variant: str) -> Any:
    from segment_anything.build_sam import _build_sam

    dim, depth, heads, glob_idx = VIT[variant]
    torch.manual_seed(0)
    return _build_sam(encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
                      encoder_global_attn_indexes=glob_idx).eval()


def example_image() -> np.ndarray:
    """The first usiigaci example stretched to 8 bits (as v / 255), resized to 1024 x 1024."""
    from PIL import Image

    path = sorted(glob.glob(str(ROOT / "examples/usiigaci/images/*.tif")))[0]
    raw = np.asarray(Image.open(path), dtype=np.float64)
    lo, hi = np.percentile(raw, (0.1, 99.9))
    eight = np.clip((raw - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(eight).resize((1024, 1024)), dtype=np.float32) / 255


def encoder_flops(model: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from monolayer.backends.sam import fast

    fast.uninstall(model)  # count the library's own matmuls
    x = torch.zeros(1, 3, 1024, 1024)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.image_encoder(x)
    return int(counter.get_total_flops())


def seconds_per_image(run: Callable[[], Any], images: int) -> tuple[float, float]:
    """Median and min seconds per call over ``images`` calls after one warm-up."""
    run()
    times = []
    for _ in range(images):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def anchor(model: Any, image: np.ndarray, bf16: bool) -> Callable[[], Any]:
    """The promptless pipeline with segment-anything's unmodified attention."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from monolayer.backends.sam import fast
    from monolayer.backends.sam.model import prepare, promptless_logits

    fast.uninstall(model)
    resize = ResizeLongestSide(1024)

    @torch.inference_mode()
    def run() -> Any:
        x, size = prepare(model, resize, image, torch.device("cpu"))
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            emb = model.image_encoder(x)
        return torch.sigmoid(promptless_logits(model, emb.float(), size, image.shape))
    return run


def cuda_table(repeats: int) -> None:
    from monolayer.backends.sam import fast

    print("\nCUDA: image encoder alone, s/batch (median of %d)" % repeats)
    print(f"{'variant':8} {'batch':>5} {'prec':>5} {'library':>9} {'fused':>9} {'speed-up':>8}")
    for variant in VIT:
        model = build(variant).cuda()
        for batch in (1, 8):
            x = torch.randn(batch, 3, 1024, 1024, device="cuda")
            for prec in ("fp32", "bf16"):
                ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if prec == "bf16" \
                    else contextlib.nullcontext
                res = {}
                for name, setup in (("library", fast.uninstall), ("fused", fast.install)):
                    setup(model)

                    def run() -> None:
                        with torch.inference_mode(), ctx():
                            model.image_encoder(x)
                        torch.cuda.synchronize()
                    res[name], _ = seconds_per_image(run, repeats)
                print(f"{variant:8} {batch:>5} {prec:>5} {res['library']:>9.3f} {res['fused']:>9.3f} "
                      f"{res['library'] / res['fused']:>7.2f}x")
        del model
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="timed images per configuration (after 1 warm-up)")
    args = parser.parse_args()

    from monolayer.backends._spec import RuntimeOptions
    from monolayer.backends.sam.model import SamBackend
    from monolayer.devices import cpu_has_native_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU native bf16: {cpu_has_native_bf16()}, CUDA: {torch.cuda.is_available()}")
    rate = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    print(f"GEMM (4096x768)@(768x3072): fp32 {rate['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {rate['bf16'] / 1e9:.0f} GFLOP/s")
    model = build("vit_b")
    flops = encoder_flops(model)
    floor = {p: flops / r for p, r in rate.items()}
    print(f"ViT-B encoder, 1024x1024: {flops / 1e12:.3f} TFLOP; floor fp32 {floor['fp32']:.2f} s, "
          f"bf16 {floor['bf16']:.2f} s")
    image = example_image()

    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "sam_vit_b_random.pth"
        torch.save(model.state_dict(), weights)
        for requested in ("fp32", "auto"):
            backend = SamBackend(runtime=RuntimeOptions(weights=str(weights), device="cpu",
                                                        precision=requested))
            med, best = seconds_per_image(lambda: backend.predict(image), args.images)
            rows.append((f"monolayer --precision {requested}", backend.precision, med, best))
            del backend
    for bf16 in (False, True):
        med, best = seconds_per_image(anchor(model, image, bf16), args.images)
        rows.append(("segment-anything (unmodified)", "bf16" if bf16 else "fp32", med, best))

    print(f"\nViT-B promptless, 1024x1024, s/image: median (min) of {args.images} after 1 warm-up")
    print(f"{'pipeline':32} {'ran in':>6} {'s/image':>8} {'min':>7} {'x floor':>8}")
    for name, prec, med, best in rows:
        print(f"{name:32} {prec:>6} {med:>8.2f} {best:>7.2f} {med / floor[prec]:>7.2f}x")
    if torch.cuda.is_available():
        cuda_table(max(3, args.images))
    else:
        print("\nCUDA: not available here; the GPU table (ViT-B/H, batch 1/8, bf16/fp32) was skipped.")


if __name__ == "__main__":
    main()
