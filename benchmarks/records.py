"""``evaluate`` and ``stats`` over 100,000 records (batch evaluation of large labelled sets).

Writes N segment records and N truth records that point at small mask files
(``--distinct`` different 64 x 64 masks, shared between records so the disk
holds little) with unique image names and checksums, then times, as a user
would run them:

1. ``monolayer evaluate pred.jsonl --truth truth.jsonl -q > eval.jsonl``
   (N predictions matched to N truth images by checksum, 2 N mask reads);
2. ``monolayer stats eval.jsonl --by method --field iou --field abs_confluence_error``;
3. ``monolayer stats rounds`` over the same records tagged with strategy,
   repeat and round (Mann-Whitney U per round).

It prints the seconds, records per second and peak RSS of each. Nothing is
asserted: this is a benchmark.

Usage::

    python benchmarks/records.py [--records 100000] [--distinct 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

MONOLAYER = [sys.executable, "-m", "monolayer"]
_LAUNCHER = ("import resource, subprocess, sys, json, time\n"
             "t = time.perf_counter()\n"
             "out = open(sys.argv[1], 'w')\n"
             "p = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.PIPE)\n"
             "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter() - t, "
             "'maxrss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
             "'stderr': p.stderr.decode()[-400:]}))\n")


def run(output: Path, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(output), *MONOLAYER, *args],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    result["records_out"] = sum(1 for _ in open(output))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "masks").mkdir()
        for i in range(args.distinct):
            tifffile.imwrite(tmp / "masks" / f"p{i}.mask.tif", (rng.random((64, 64)) < rng.random()).astype(np.uint8))
            tifffile.imwrite(tmp / "masks" / f"t{i}.labels.tif",
                             (rng.random((64, 64)) < rng.random()).astype(np.uint16))
        started = time.perf_counter()
        with open(tmp / "pred.jsonl", "w") as pred, open(tmp / "truth.jsonl", "w") as truth:
            for i in range(args.records):
                sha = f"{i:064x}"
                k = i % args.distinct
                pred.write(json.dumps({"schema": "monolayer.segment/1", "image": f"img/{i}.tif",
                                       "image_sha256": sha, "mask": f"masks/p{k}.mask.tif",
                                       "model": "classical", "method": "phase"}) + "\n")
                truth.write(json.dumps({"schema": "monolayer.truth/1", "image": f"img/{i}.tif",
                                        "image_sha256": sha, "mask": f"masks/t{k}.labels.tif"}) + "\n")
        print(f"wrote {args.records} prediction and truth records in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        results = {}
        results["evaluate"] = run(tmp / "eval.jsonl", ["evaluate", str(tmp / "pred.jsonl"), "--truth",
                                                       str(tmp / "truth.jsonl"), "-q"])
        # Tag the records as an AL experiment would: 2 strategies x 5 repeats x 10 rounds.
        with open(tmp / "eval.jsonl") as source, open(tmp / "tagged.jsonl", "w") as tagged:
            for i, line in enumerate(source):
                record = json.loads(line)
                record.update(strategy=("entropy", "random")[i % 2], repeat=(i // 2) % 5, round=(i // 10) % 10)
                tagged.write(json.dumps(record) + "\n")
        results["stats"] = run(tmp / "stats.jsonl", ["stats", str(tmp / "eval.jsonl"), "--by", "method",
                                                     "--field", "iou", "--field", "abs_confluence_error"])
        results["stats_rounds"] = run(tmp / "rounds.jsonl", ["stats", "rounds", str(tmp / "tagged.jsonl"),
                                                             "--metric", "abs_confluence_error"])
    print("\n| command | records in | seconds | records/s | peak RSS MB |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for name, r in results.items():
        ok = "" if r["rc"] == 0 else f" (exit {r['rc']}: {r['stderr'].strip()})"
        print(f"| {name}{ok} | {args.records} | {r['seconds']:.1f} | {args.records / r['seconds']:.0f} | "
              f"{r['maxrss_mb']:.0f} |", file=sys.stderr)


if __name__ == "__main__":
    main()
