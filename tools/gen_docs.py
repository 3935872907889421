#!/usr/bin/env python3
"""Regenerate man/, completions/ and the generated sections of README.md from the code.

    python tools/gen_docs.py          # write the files
    python tools/gen_docs.py --check  # exit 1 and list the files that drifted
"""

from __future__ import annotations

import sys
from pathlib import Path

from monolayer.cli.docgen import render_all

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    check = "--check" in argv
    drifted = []
    for rel, text in render_all(ROOT).items():
        path = ROOT / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        drifted.append(rel)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if check and drifted:
        print("out of date (run python tools/gen_docs.py):", *drifted, sep="\n  ", file=sys.stderr)
        return 1
    for rel in drifted:
        print(f"wrote {rel}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
