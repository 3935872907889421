"""The active-learning manifest: pool, train and test sets, round, strategy history, seed.

One manifest is one repeat of one protocol; repeats with other seeds are other
manifests. Images are truth records (as coco2mask writes them) and are
identified by their ``image`` path. Every change is written atomically, so an
interrupted round leaves the previous state intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monolayer import __version__
from monolayer.errors import DataError, NoInputError, UsageError
from monolayer.io.atomic import write_text_atomic

SCHEMA = "monolayer.al-manifest/1"
STRATEGIES = ("entropy", "score", "random")
# The field of an entropy-rank record each ranked strategy needs.
RANK_FIELD = {"entropy": "entropy", "score": "score"}


@dataclass
class Manifest:
    seed: int
    pool: list[dict[str, Any]]
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": __version__, "seed": self.seed, "round": self.round,
                "source": self.source, "counts": self.counts(), "train": self.train, "test": self.test,
                "pool": self.pool, "history": self.history}

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test), "pool": len(self.pool)}

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.is_file():
            raise NoInputError(f"no such manifest: {path}", "make one with 'monolayer al-round init'")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a JSON manifest ({exc})") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise DataError(f"{path}: not an al-round manifest (schema {SCHEMA} expected)")
        return cls(seed=int(doc["seed"]), pool=doc["pool"], train=doc["train"], test=doc["test"],
                   round=int(doc["round"]), history=doc["history"], source=doc.get("source", ""))


def _key(record: dict[str, Any]) -> str:
    return str(record["image"])


def init(images: list[dict[str, Any]], *, test_size: int, initial: int, seed: int,
         test: list[dict[str, Any]] | None = None, test_target: float = 0.5, source: str = "") -> Manifest:
    """Split labelled images into test, initial training set and pool.

    The test set is ``test`` if given, else the ``test_size`` images whose
    confluence is nearest ``test_target`` (the paper chose test images around 50 %
    confluence, the range that matters for harvesting). The initial training set
    is ``initial`` images drawn at random (``seed``) from the rest.
    """
    if initial < 1:
        raise UsageError("--initial must be at least 1")
    seen: dict[str, dict[str, Any]] = {}
    for record in images:
        seen.setdefault(_key(record), record)
    ordered = sorted(seen.values(), key=_key)
    if test is not None:
        wanted = {_key(r) for r in test}
        missing = wanted - seen.keys()
        if missing:
            raise DataError(f"{len(missing)} test image(s) are not among --images, e.g. {sorted(missing)[0]}")
        test_set = [r for r in ordered if _key(r) in wanted]
    else:
        if test_size < 0:
            raise UsageError("--test-size must not be negative")
        if any("confluence" not in r for r in ordered):
            raise DataError("--images records need a 'confluence' field to choose the test set",
                            "use coco2mask output, or give --test")
        by_distance = sorted(ordered, key=lambda r: (abs(float(r["confluence"]) - test_target), _key(r)))
        test_set = sorted(by_distance[:test_size], key=_key)
    test_keys = {_key(r) for r in test_set}
    rest = [r for r in ordered if _key(r) not in test_keys]
    if initial > len(rest):
        raise UsageError(f"--initial {initial} is more than the {len(rest)} images left after the test set")
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(rest), size=initial, replace=False).tolist())
    train = [r for i, r in enumerate(rest) if i in chosen]
    pool = [r for i, r in enumerate(rest) if i not in chosen]
    manifest = Manifest(seed=seed, pool=pool, train=train, test=test_set, source=source)
    manifest.history.append({"round": 0, "strategy": "random", "picked": [_key(r) for r in train],
                             "why": f"initial training set: {initial} images drawn with seed {seed}"})
    return manifest


def next_round(manifest: Manifest, *, strategy: str, k: int,
               ranked: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Move the next ``k`` pool images to the training set; return the moved records.

    ``random`` draws with a generator seeded by (seed, round), so a repeat is
    reproducible; ``entropy`` and ``score`` take the pool images in the order of
    an entropy-rank file (most uncertain first).
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}", f"choose one of: {', '.join(STRATEGIES)}")
    if k < 1:
        raise UsageError("--k must be at least 1")
    if not manifest.pool:
        raise UsageError("the pool is empty: every image is in the training set",
                         "the protocol is finished for this repeat")
    round_number = manifest.round + 1
    pool_by_key = {_key(r): r for r in manifest.pool}
    take = min(k, len(manifest.pool))
    if strategy == "random":
        rng = np.random.default_rng([manifest.seed, round_number])
        order = [manifest.pool[i] for i in rng.permutation(len(manifest.pool))[:take]]
        picked = [{"image": _key(r)} for r in order]
        why = f"random draw, generator seeded with (seed {manifest.seed}, round {round_number})"
    else:
        if ranked is None:
            raise UsageError(f"--strategy {strategy} needs --ranked (entropy-rank output for the pool)")
        wanted = RANK_FIELD[strategy]
        in_pool = [r for r in ranked if "error" not in r and str(r.get("image")) in pool_by_key]
        if any(wanted not in r for r in in_pool):
            raise DataError(f"--ranked records have no '{wanted}' field",
                            "entropy ranks probability maps, score ranks Mask R-CNN records")
        in_pool.sort(key=lambda r: int(r.get("rank", 0)))
        unranked = len(pool_by_key) - len({str(r["image"]) for r in in_pool})
        if unranked:
            raise DataError(f"{unranked} pool image(s) have no rank in --ranked",
                            "segment and rank the whole pool before choosing")
        order = [pool_by_key[str(r["image"])] for r in in_pool[:take]]
        picked = [{"image": str(r["image"]), "rank": r.get("rank"), wanted: r.get(wanted)}
                  for r in in_pool[:take]]
        why = f"the {take} most uncertain pool images by {wanted} ({in_pool[0].get('definition', '')})"
    moved = {_key(r) for r in order}
    manifest.pool = [r for r in manifest.pool if _key(r) not in moved]
    manifest.train = manifest.train + order
    manifest.round = round_number
    manifest.history.append({"round": round_number, "strategy": strategy, "k": k, "picked": picked, "why": why})
    return order
