"""The active-learning manifest: pool, train and test sets, round, strategy history, seed.

One manifest is one repeat of one protocol; repeats with other seeds are other
manifests. Images are truth records (as coco2mask writes them) and are
identified by their ``image`` path. Every change is written atomically, so an
interrupted round leaves the previous state intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monolayer import __version__
from monolayer.errors import DataError, NoInputError, UsageError
from monolayer.io.atomic import write_text_atomic
from monolayer.records import parse_line
from monolayer.schema import check, finite_float

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
        check_disjoint({"pool": self.pool, "train": self.train, "test": self.test}, str(path))
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.is_file():
            raise NoInputError(f"no such manifest: {path}", "make one with 'monolayer al-round init'")
        try:
            doc = parse_line(path.read_bytes().decode("utf-8").replace("\n", " "), str(path))
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
        if doc.get("schema") != SCHEMA:
            raise DataError(f"{path}: not an al-round manifest (schema {SCHEMA} expected)")
        return cls.from_json(doc, str(path))

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: str) -> Manifest:
        """A manifest from its JSON, checked: types, and pool, train and test disjoint."""
        for name in ("seed", "round"):
            value = doc.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"{where}: field {name!r} is {value!r:.40}, expected a non-negative integer")
        sets: dict[str, list[dict[str, Any]]] = {}
        for name in ("pool", "train", "test"):
            records = doc.get(name)
            if not isinstance(records, list):
                raise DataError(f"{where}: field {name!r} is not a list of image records")
            for i, record in enumerate(records):
                if not isinstance(record, dict):
                    raise DataError(f"{where}: {name}[{i}] is not an object")
                check("truth", record, f"{where}: {name}[{i}]", require=("image",))
            sets[name] = records
        check_disjoint(sets, where)
        history = doc.get("history")
        if not isinstance(history, list) or not all(
                isinstance(h, dict) and isinstance(h.get("round"), int) and isinstance(h.get("strategy"), str)
                and isinstance(h.get("picked"), list) for h in history):
            raise DataError(f"{where}: field 'history' is not a list of rounds (round, strategy, picked)")
        trained = {_key(r) for r in sets["train"]}
        for h in history:
            for pick in h["picked"]:
                name = pick.get("image") if isinstance(pick, dict) else pick
                if not isinstance(name, str) or name not in trained:
                    raise DataError(f"{where}: round {h['round']} picked {name!r:.80}, which is not in the "
                                    "training set")
        source = doc.get("source", "")
        return cls(seed=doc["seed"], pool=sets["pool"], train=sets["train"], test=sets["test"],
                   round=doc["round"], history=history, source=source if isinstance(source, str) else "")


def identities(record: dict[str, Any]) -> set[str]:
    """What identifies an image: its normalised path and, when known, its content's SHA-256,
    so the same image named two ways (``a.tif``, ``./a.tif``) is still one image."""
    found = {"path:" + os.path.normpath(str(record["image"]))}
    if isinstance(record.get("image_sha256"), str):
        found.add("sha256:" + record["image_sha256"])
    return found


def check_disjoint(sets: dict[str, list[dict[str, Any]]], where: str) -> None:
    """Refuse an image that is in two of pool, train and test (or twice in one): a test
    image must never be moved into training."""
    owner: dict[str, str] = {}
    for name, records in sets.items():
        for record in records:
            for ident in identities(record):
                if ident in owner:
                    raise DataError(f"{where}: image {record['image']!r:.120} is in {owner[ident]} and in {name}",
                                    "pool, train and test must not share an image")
                owner[ident] = name


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
    known: set[str] = set()
    for record in images:
        ids = identities(record)
        if ids & known:
            continue  # the same image listed twice (by path or content): once is enough
        known |= ids
        seen[_key(record)] = record
    ordered = sorted(seen.values(), key=_key)
    if test is not None:
        wanted: set[str] = set()
        for record in test:
            ids = identities(record)
            if not ids & known:
                raise DataError(f"test image {record['image']!r:.120} is not among --images",
                                "every test image must be one of the labelled images")
            wanted |= ids
        test_set = [r for r in ordered if identities(r) & wanted]
    else:
        if test_size < 0:
            raise UsageError("--test-size must not be negative")
        if any("confluence" not in r for r in ordered):
            raise DataError("--images records need a 'confluence' field to choose the test set",
                            "use coco2mask output, or give --test")
        confluence = {_key(r): finite_float(r["confluence"], f"--images record {_key(r)!r:.120}", "confluence")
                      for r in ordered}  # a 400-digit integer has no float: an error, not a crash
        by_distance = sorted(ordered, key=lambda r: (abs(confluence[_key(r)] - test_target), _key(r)))
        test_set = sorted(by_distance[:test_size], key=_key)
    test_keys = {_key(r) for r in test_set}
    rest = [r for r in ordered if _key(r) not in test_keys]
    check_disjoint({"test": test_set, "rest": rest}, "al-round init")
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
