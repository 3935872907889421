"""How close SAM's image encoder runs to the hardware's matrix-multiply floor, and how faithful it stays.

In one process, on one machine, this measures:

* the GEMM rate in fp32 and bf16 at the encoder's two largest matmul shapes (the
  MLP's (4096 x 768) @ (768 x 3072) and (4096 x 3072) @ (3072 x 768)), for a
  second before every round of timings: the median of all those multiplies is the
  sustained rate, the best one the burst rate (a shared or power-limited CPU --
  this one -- bursts near 3x its sustained bf16 rate for a fraction of a second);
* the ViT-B image encoder's FLOP count for one 1024 x 1024 image
  (``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-add), hence
  the floor: FLOPs / sustained GEMM rate, per precision (and, printed beside it,
  the ratio to FLOPs / burst rate, which no whole encoder sustains);
* seconds per image of the whole promptless pipeline (preprocess, encoder,
  decoder, upsampling) for segment-anything's own, unmodified forward (the
  anchor) in fp32 and in bf16 autocast, and for ``monolayer``'s SAM backend
  (weights saved and loaded through its own loading code) with ``--precision
  fp32`` and ``--precision auto`` (the default), each with its ratio to the floor
  of the precision it ran in, timed in rounds (one image of each configuration
  per round, after that round's GEMM measurement) so that a slow spell of the
  machine falls on all of them;
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

    python benchmarks/sam_speed.py                 # 4 rounds: 4 timed images per configuration
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


def gemm_rates(dtype: torch.dtype, seconds: float = 1.0) -> list[float]:
    """FLOP/s of each pair of the encoder's MLP matmuls in ``dtype``, multiplied back to back
    for about ``seconds``. A shared or power-limited CPU runs the first ones faster than it
    keeps up (here: bursts near 2 TFLOP/s in bf16, then about 700 GFLOP/s sustained), so
    every rate is kept: the median is the sustained rate, the best the burst."""
    pairs = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in GEMM_SHAPES]
    flops = sum(2 * m * k * n for m, k, n in GEMM_SHAPES)
    for a, b in pairs:
        a @ b
    rates: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(rates) < 5:
        t = time.perf_counter()
        for a, b in pairs:
            a @ b
        rates.append(flops / (time.perf_counter() - t))
    return rates


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
    parser.add_argument("--images", type=int, default=4, help="timed rounds: images per configuration (after 1 warm-up)")
    parser.add_argument("--gemm-seconds", type=float, default=1.0,
                        help="seconds of matrix multiplies per precision before each round")
    args = parser.parse_args()

    from monolayer.backends._spec import RuntimeOptions
    from monolayer.backends.sam import fast
    from monolayer.backends.sam.model import SamBackend
    from monolayer.devices import cpu_has_native_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU native bf16: {cpu_has_native_bf16()}")
    model = build_vit_b()
    flops = encoder_flops(model)
    image = example_image()
    scale, fg = make_sensitive(model, image)
    print(f"ViT-B encoder, 1024x1024: {flops / 1e12:.3f} TFLOP; "
          f"sensitive ViT-B: hypernetwork output x{scale:.1f}, foreground at 0.5: {fg:.2f}")

    # Every configuration loaded side by side, then timed in rounds: each round measures the
    # GEMM rates first, then one image per configuration, starting with a different one each
    # round, so a slow spell of the machine (a shared host) falls on the floor and on every
    # pipeline alike.
    fast.uninstall(model)
    runs: dict[str, tuple[str, Callable[[], Any]]] = {
        "segment-anything (unmodified) fp32": ("fp32", pipeline(model, image, bf16=False)),
        "segment-anything (unmodified) bf16": ("bf16", pipeline(model, image, bf16=True)),
    }
    tmp = tempfile.TemporaryDirectory()
    weights = Path(tmp.name) / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), weights)
    backends = {}
    for requested in ("fp32", "auto"):
        backend = SamBackend(runtime=RuntimeOptions(weights=str(weights), device="cpu", precision=requested))
        backends[requested] = backend
        runs[f"monolayer --precision {requested}"] = (backend.precision, lambda b=backend: b.predict(image).score)
    times: dict[str, list[float]] = {name: [] for name in runs}
    maps: dict[str, np.ndarray] = {name: np.asarray(run()) for name, (_, run) in runs.items()}  # warm-up
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    names = list(runs)
    for round_ in range(args.images):
        for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rates[prec] += gemm_rates(dtype, args.gemm_seconds)
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # each goes first in turn
            run = runs[name][1]
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    tmp.cleanup()

    sustained = {p: statistics.median(r) for p, r in rates.items()}
    burst = {p: max(r) for p, r in rates.items()}
    floor = {p: flops / r for p, r in sustained.items()}
    print("GEMM " + " + ".join(f"({m}x{k})@({k}x{n})" for m, k, n in GEMM_SHAPES)
          + ", measured before every round: " + "; ".join(
              f"{p} sustained (median) {sustained[p] / 1e9:.0f} GFLOP/s, burst (best) {burst[p] / 1e9:.0f}"
              for p in rates))
    print(f"floor (encoder FLOPs / sustained rate): fp32 {floor['fp32']:.2f} s, bf16 {floor['bf16']:.2f} s; "
          f"at the burst rate: fp32 {flops / burst['fp32']:.2f} s, bf16 {flops / burst['bf16']:.2f} s")

    print(f"\nViT-B promptless, {image.shape[1]}x{image.shape[0]} image, s/image: median, min and max "
          f"of {args.images} rounds after 1 warm-up")
    print(f"{'pipeline':36} {'ran in':>6} {'median':>7} {'min':>6} {'max':>6} {'x floor':>8} {'x burst floor':>14}")
    for name, (prec, _) in runs.items():
        med = statistics.median(times[name])
        print(f"{name:36} {prec:>6} {med:>7.2f} {min(times[name]):>6.2f} {max(times[name]):>6.2f} "
              f"{med / floor[prec]:>7.2f}x {med * burst[prec] / flops:>13.2f}x")

    print("\nFaithfulness on this ViT-B (prob maps; mask = prob >= 0.5)")
    reference = maps["segment-anything (unmodified) fp32"]
    lib16 = maps["segment-anything (unmodified) bf16"]
    own = np.abs(lib16 - reference)
    print(f"segment-anything bf16 vs its fp32: max {own.max():.2e}, mean {own.mean():.2e}, "
          f"mask IoU {iou(lib16 >= 0.5, reference >= 0.5):.4f}")
    for requested, backend in backends.items():
        ours = maps[f"monolayer --precision {requested}"]
        library = reference if backend.precision == "fp32" else lib16
        same = np.abs(ours - library)
        to32 = np.abs(ours - reference)
        print(f"monolayer {backend.precision} vs segment-anything {backend.precision}: max {same.max():.2e}, "
              f"mean {same.mean():.2e}; vs fp32: max {to32.max():.2e}, "
              f"mask IoU {iou(ours >= 0.5, reference >= 0.5):.4f}")


if __name__ == "__main__":
    main()
