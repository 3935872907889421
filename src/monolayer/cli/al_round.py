"""``monolayer al-round``: active-learning rounds over a JSON manifest (init, next, show)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from monolayer.al.manifest import Manifest, init as init_manifest, next_round
from monolayer.cli.common import INPUT, OUTPUT, cli_errors, say_warning
from monolayer.io.atomic import present
from monolayer.records import RecordWriter, iter_jsonl

app = typer.Typer(help="Active-learning rounds: move the most uncertain (or random) pool images "
                  "to the training set, one round per call, state in a JSON manifest.",
                  no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


class Strategy(str, enum.Enum):
    entropy = "entropy"
    score = "score"
    random = "random"


class Part(str, enum.Enum):
    train = "train"
    test = "test"
    pool = "pool"


def _records(path: Path, kind: str, require: tuple[str, ...]) -> list[dict]:
    """Records of ``kind`` from a JSON Lines file, each checked; error records are skipped."""
    from monolayer.schema import check

    records = []
    for number, record in iter_jsonl(path):
        check(kind, record, f"{path}:{number}", require=require)
        if "error" not in record:
            records.append(record)
    return records


def _test_records(path: Path) -> list[dict]:
    from monolayer.io.truth import truth_records

    return truth_records(path, with_confluence=False) if path.is_dir() else _records(path, "truth", ("image",))



@app.command("init")
@cli_errors
def init(
    images: Annotated[Path, typer.Option("--images", help="Labelled images: coco2mask JSON "
                                         "Lines, or a folder with images/ and masks/.",
                                         rich_help_panel=INPUT, show_default=False)],
    initial: Annotated[int, typer.Option("--initial", help="Size of the random initial training set.",
                                         show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The manifest file to create.",
                                      rich_help_panel=OUTPUT, show_default=False)],
    test_size: Annotated[int, typer.Option("--test-size", help="Test images, chosen as those nearest "
                                           "--test-target confluence (ignored with --test).")] = 0,
    test_target: Annotated[float, typer.Option("--test-target", help="Confluence the test images are "
                                               "chosen around.")] = 0.5,
    test: Annotated[Path | None, typer.Option("--test", help="The test images instead: JSON "
                                              "Lines naming them, or a folder with images/ and masks/.",
                                              rich_help_panel=INPUT)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial draw and of random rounds.")] = 0,
    force: Annotated[bool, typer.Option("--overwrite", "--force", help="Replace an existing manifest.")] = False,
) -> None:
    """Make a manifest: test set, random initial training set, pool. Prints the training set.

    Example: monolayer al-round init --images truth.jsonl --test-size 2 --initial 2 --seed 1 -o rep1.json
    """
    if present(out) and not force:
        from monolayer.errors import UsageError

        raise UsageError(f"{out} exists", "use --overwrite to start this repeat again")
    from monolayer.io.truth import truth_records

    manifest = init_manifest(truth_records(images), test_size=test_size, initial=initial, seed=seed,
                             test=_test_records(test) if test else None, test_target=test_target,
                             source=str(images))
    manifest.save(out)
    RecordWriter().write_all(manifest.train)


@app.command("next")
@cli_errors
def next_command(
    manifest_path: Annotated[Path, typer.Argument(help="The manifest.", show_default=False)],
    strategy: Annotated[Strategy, typer.Option("--strategy", help="entropy or score (needs --ranked), "
                                               "or random.", show_default=False)],
    k: Annotated[int, typer.Option("--k", help="Images to move from pool to train.")] = 1,
    ranked: Annotated[Path | None, typer.Option("--ranked", help="entropy-rank output for the pool.",
                                                rich_help_panel=INPUT)] = None,
) -> None:
    """Move the next k pool images to the training set; print the new training set.

    Example: monolayer al-round next rep1.json --strategy entropy --k 2 --ranked ranked.jsonl > train.jsonl
    """
    manifest = Manifest.load(manifest_path)
    moved = next_round(manifest, strategy=strategy.value, k=k,
                       ranked=_records(ranked, "rank", ("image", "rank")) if ranked else None)
    manifest.save(manifest_path)
    if len(moved) < k:
        say_warning(f"only {len(moved)} image(s) were left in the pool")
    RecordWriter().write_all(manifest.train)


@app.command("show")
@cli_errors
def show(
    manifest_path: Annotated[Path, typer.Argument(help="The manifest.", show_default=False)],
    part: Annotated[Part, typer.Option("--set", help="Which set to print.")] = Part.train,
) -> None:
    """Print one set of a manifest (train, test or pool) as JSON Lines; counts on stderr.

    Example: monolayer al-round show rep1.json --set pool | monolayer segment - -m unet -w m.pt -o pool/
    """
    manifest = Manifest.load(manifest_path)
    counts = manifest.counts()
    say = f"round {manifest.round}: " + ", ".join(f"{n} {name}" for name, n in counts.items())
    import sys

    print(f"monolayer: al-round: {say}", file=sys.stderr)
    RecordWriter().write_all(getattr(manifest, part.value))
