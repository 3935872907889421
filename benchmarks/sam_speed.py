"""How close SAM's image encoder runs to the hardware's matrix-multiply floor, and how faithful it stays.

In one process, on one machine, this measures:

* the GEMM rate in fp32 and bf16 at the encoder's two largest matmul shapes (the
  MLP's (4096 x 768) @ (768 x 3072) and (4096 x 3072) @ (3072 x 768)), best of
  several repeats;
* the ViT-B image encoder's FLOP count for one 1024 x 1024 image
  (``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-add), hence
  the floor: FLOPs / GEMM rate, per precision;
* seconds per image of the whole promptless pipeline (preprocess, encoder,
  decoder, upsampling) for segment-anything's own, unmodified forward (the
  anchor) in fp32 and in bf16 autocast, and for ``monolayer``'s SAM backend
  (weights saved and loaded through its own loading code) with ``--precision
  fp32`` and ``--precision auto`` (the default), each with its ratio to the floor
  of the precision it ran in;
* faithfulness on that ViT-B: the max difference of each monolayer prob map from
  the library's in the same precision, the library's own bf16-vs-fp32 distance,
  and the mask IoU against the library's fp32 mask.

The ViT-B has random weights made sensitive: random relative-position tables
(std 0.5; a fresh SAM's are zero, which would leave the attention bias untested)
and the mask hypernetworks' output layers scaled so the logits spread over about
+-3 around the threshold. The image is a real example (examples/usiigaci, 8-bit
as a camera stores it), at its own size (1024 x 1022). Timings show compute cost,
not accuracy. Nothing is asserted. The GPU counterpart is ``sam_gpu.py``.

Usage::

    python benchmarks/sam_speed.py                 # 2 timed images per configuration
    python benchmarks/sam_speed.py --images 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VIT_B = (768, 12, 12, [2, 5, 8, 11])
GEMM_SHAPES = ((4096, 768, 3072), (4096, 3072, 768))


def gemm_rate(dtype: torch.dtype, repeats: int = 20) -> float:
    """FLOP/s of the encoder's MLP matmuls in ``dtype``: best of ``repeats``, summed over the shapes."""
    total_flops, total_time = 0, 0.0
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        total_flops += 2 * m * k * n
        total_time += best
    return total_flops / total_time


def build_vit_b() -> Any:
    """A random ViT-B SAM with random relative-position tables."""
    return random_sam(VIT_B)


def random_sam(shape: tuple[int, int, int, tuple[int, ...]]) -> Any:
    """A SAM of ``shape`` (embed dim, depth, heads, global blocks) with random weights and
    random relative-position tables (segment-anything initialises those to zero, which
    would leave the attention bias untested), built by segment-anything's own builder."""
    from segment_anything.build_sam import _build_sam

    dim, depth, heads, glob_idx = shape
    torch.manual_seed(0)
    model = _build_sam(encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
                       encoder_global_attn_indexes=glob_idx).eval()
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if ".rel_pos_" in name:
                p.normal_(0, 0.5)
    return model


def example_image() -> np.ndarray:
    """set30 as an 8-bit camera stores it (16-bit / 257), as v / 255: SAM's own input."""
    import tifffile

    raw = tifffile.imread(ROOT / "examples/usiigaci/images/set30.tif")
    return np.round(raw / 257).astype(np.float32) / 255


def make_sensitive(model: Any, image: np.ndarray) -> tuple[float, float]:
    """Scale the hypernetworks' output layers so the logits' std is 3 (the fresh model's are
    about +-0.1: a near-constant map that hides differences); returns (scale, foreground
    fraction at 0.5), printed so a map that is all one side of the threshold shows."""
    from monolayer.backends.sam import fast

    fast.uninstall(model)
    logits = pipeline(model, image, bf16=False, probability=False)()
    scale = 3.0 / max(float(logits.std()), 1e-12)
    with torch.no_grad():
        for name, p in model.mask_decoder.named_parameters():
            if name.startswith("output_hypernetworks_mlps.") and ".layers.2." in name:
                p.mul_(scale)
    return scale, float((logits * scale > 0).mean())


def encoder_flops(model: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from monolayer.backends.sam import fast

    fast.uninstall(model)  # count the library's own matmuls
    x = torch.zeros(1, 3, 1024, 1024)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.image_encoder(x)
    return int(counter.get_total_flops())


def timed(run: Callable[[], Any], images: int) -> tuple[list[float], Any]:
    """Seconds of each of ``images`` calls after one warm-up, and the last call's result."""
    result = run()
    times = []
    for _ in range(images):
        t = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t)
    return times, result


def pipeline(model: Any, image: np.ndarray, bf16: bool, probability: bool = True) -> Callable[[], Any]:
    """The promptless pipeline on the model as it is (library or fused attention installed)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from monolayer.backends.sam.model import prepare, promptless_logits

    resize = ResizeLongestSide(1024)

    @torch.inference_mode()
    def run() -> Any:
        x, size = prepare(model, resize, image, torch.device("cpu"))
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            emb = model.image_encoder(x)
        logits = promptless_logits(model, emb.float(), size, image.shape)
        return (torch.sigmoid(logits) if probability else logits).numpy()
    return run


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="timed images per configuration (after 1 warm-up)")
    args = parser.parse_args()

    from monolayer.backends._spec import RuntimeOptions
    from monolayer.backends.sam import fast
    from monolayer.backends.sam.model import SamBackend
    from monolayer.devices import cpu_has_native_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU native bf16: {cpu_has_native_bf16()}")
    rate = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    print("GEMM " + " + ".join(f"({m}x{k})@({k}x{n})" for m, k, n in GEMM_SHAPES)
          + f": fp32 {rate['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rate['bf16'] / 1e9:.0f} GFLOP/s")
    model = build_vit_b()
    flops = encoder_flops(model)
    floor = {p: flops / r for p, r in rate.items()}
    print(f"ViT-B encoder, 1024x1024: {flops / 1e12:.3f} TFLOP; floor fp32 {floor['fp32']:.2f} s, "
          f"bf16 {floor['bf16']:.2f} s")
    image = example_image()
    scale, fg = make_sensitive(model, image)
    print(f"sensitive ViT-B: hypernetwork output x{scale:.1f}, foreground at 0.5: {fg:.2f}")

    rows: list[tuple[str, str, list[float]]] = []
    maps: dict[tuple[str, str], np.ndarray] = {}
    fast.uninstall(model)
    for prec in ("fp32", "bf16"):
        times, maps["library", prec] = timed(pipeline(model, image, bf16=prec == "bf16"), args.images)
        rows.append(("segment-anything (unmodified)", prec, times))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "sam_vit_b_random.pth"
        torch.save(model.state_dict(), weights)
        del model
        for requested in ("fp32", "auto"):
            backend = SamBackend(runtime=RuntimeOptions(weights=str(weights), device="cpu", precision=requested))
            times, pred = timed(lambda: backend.predict(image), args.images)
            rows.append((f"monolayer --precision {requested}", backend.precision, times))
            maps["monolayer", backend.precision] = pred.score
            del backend

    print(f"\nViT-B promptless, {image.shape[1]}x{image.shape[0]} image, s/image: "
          f"median, min and max of {args.images} after 1 warm-up")
    print(f"{'pipeline':32} {'ran in':>6} {'median':>7} {'min':>6} {'max':>6} {'x floor':>8}")
    for name, prec, times in rows:
        med = statistics.median(times)
        print(f"{name:32} {prec:>6} {med:>7.2f} {min(times):>6.2f} {max(times):>6.2f} {med / floor[prec]:>7.2f}x")

    print("\nFaithfulness on this ViT-B (prob maps; mask = prob >= 0.5)")
    reference = maps["library", "fp32"]
    own = np.abs(maps["library", "bf16"] - reference)
    print(f"segment-anything bf16 vs its fp32: max {own.max():.2e}, mean {own.mean():.2e}, "
          f"mask IoU {iou(maps['library', 'bf16'] >= 0.5, reference >= 0.5):.4f}")
    for prec in ("fp32", "bf16"):
        if ("monolayer", prec) not in maps:
            continue
        ours = maps["monolayer", prec]
        same = np.abs(ours - maps["library", prec])
        to32 = np.abs(ours - reference)
        print(f"monolayer {prec} vs segment-anything {prec}: max {same.max():.2e}, mean {same.mean():.2e}; "
              f"vs fp32: max {to32.max():.2e}, mask IoU {iou(ours >= 0.5, reference >= 0.5):.4f}")


if __name__ == "__main__":
    main()
