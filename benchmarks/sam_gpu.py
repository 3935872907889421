"""SAM's image encoder on a CUDA GPU: images per second, ViT-B and ViT-H, batch 1 and 8, bf16 and fp32.

For each variant (random weights at the real sizes, random relative-position
tables), batch size and precision this times the image encoder alone on random
1024 x 1024 inputs, with segment-anything's own attention (the anchor) and with
monolayer's fused attention (``monolayer.backends.sam.fast``, as the backend
installs it; in bf16 also ``fast.prepare_for_autocast``, as the backend does), and
prints images per second and the speed-up. It also prints
the largest difference of the fused encoder's output from the library's in the
same precision, relative to the output's largest magnitude, so a fast but wrong
kernel shows.

Each configuration is 1 warm-up and ``--repeats`` timed calls (median), with
``torch.cuda.synchronize`` around each. Budget: 2 variants x 2 batches x
2 precisions x 2 attentions x (1 + 5) calls; on an H200 well under 5 minutes
(ViT-H at batch 8 in fp32 is the slowest, a few seconds a call). Needs CUDA:
without it the script says so and exits with status 69 (unavailable).

Usage::

    python benchmarks/sam_gpu.py                   # ViT-B and ViT-H, batch 1 and 8
    python benchmarks/sam_gpu.py --variants vit_b --batches 1,4,16 --repeats 10
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from typing import Any

import torch

VIT = {"vit_b": (768, 12, 12, [2, 5, 8, 11]), "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
       "vit_h": (1280, 32, 16, [7, 15, 23, 31])}


def build(variant: str) -> Any:
    from sam_speed import random_sam  # this folder is on sys.path when run as a script

    return random_sam(VIT[variant])


def time_calls(run: Any, repeats: int) -> float:
    """Median seconds per call after one warm-up."""
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="vit_b,vit_h", help="comma-separated: vit_b, vit_l, vit_h")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (after 1 warm-up)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VIT]
    if unknown:
        print(f"sam_gpu.py: error: unknown variant {unknown[0]!r} (choose from {', '.join(VIT)})", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    if not torch.cuda.is_available():
        print("sam_gpu.py: error: no CUDA device is available here (run it on a machine with an NVIDIA GPU; "
              "benchmarks/sam_speed.py is the CPU counterpart)", file=sys.stderr)
        return 69

    from monolayer.backends.sam import fast

    bf16_ok = torch.cuda.is_bf16_supported()
    precisions = ["fp32", "bf16"] if bf16_ok else ["fp32"]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 supported: {bf16_ok}")
    print(f"image encoder alone, 1024x1024 inputs, images/s (median of {args.repeats} calls after 1 warm-up)")
    print(f"{'variant':8} {'batch':>5} {'prec':>5} {'library':>9} {'fused':>9} {'speed-up':>8} {'rel. diff':>10}")
    for variant in variants:
        models = {"library": build(variant).cuda()}
        models["fused"] = copy.deepcopy(models["library"])
        fast.install(models["fused"])
        for prec in precisions:
            if prec == "bf16":  # as the backend does under bf16 autocast; the library's copy stays fp32
                fast.prepare_for_autocast(models["fused"], torch.bfloat16)

            def ctx(prec: str = prec) -> Any:
                return torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()
            for batch in batches:
                x = torch.randn(batch, 3, 1024, 1024, device="cuda")
                rate, outputs = {}, {}
                for name, model in models.items():
                    def run(model: Any = model, x: torch.Tensor = x) -> torch.Tensor:
                        with torch.inference_mode(), ctx():
                            return model.image_encoder(x)
                    rate[name] = batch / time_calls(run, args.repeats)
                    outputs[name] = run().float()
                diff = float((outputs["fused"] - outputs["library"]).abs().max()
                             / outputs["library"].abs().max().clamp_min(1e-12))
                print(f"{variant:8} {batch:>5} {prec:>5} {rate['library']:>9.2f} {rate['fused']:>9.2f} "
                      f"{rate['fused'] / rate['library']:>7.2f}x {diff:>10.1e}", flush=True)
                del x, outputs
                torch.cuda.empty_cache()
        del models
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
