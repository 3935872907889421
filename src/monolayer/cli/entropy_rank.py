"""``monolayer entropy-rank``: most uncertain predictions first, for active learning."""

from __future__ import annotations

from typing import Annotated

import typer

from monolayer.cli.common import INPUT, Tally, cli_errors, finish, write_records
from monolayer.commands.rank import rank
from monolayer.records import iter_many


@cli_errors
def entropy_rank(
    files: Annotated[list[str] | None, typer.Argument(
        help="segment JSON Lines saved with --save-prob (or Mask R-CNN records); - (default) "
        "reads stdin.", show_default=False, rich_help_panel=INPUT)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Rank images by the uncertainty of their predictions, most uncertain first.

    For probability maps the score is the mean per-pixel Shannon entropy (field
    'entropy', bits, highest first); for Mask R-CNN records it is the mean instance
    confidence (field 'score', lowest first), as in the paper. Each record carries
    its rank and the definition of its score.

    Example: monolayer segment pool/ -m unet -w model.pt -o pred/ --save-prob | monolayer entropy-rank > ranked.jsonl
    """
    tally = Tally()
    for _ in write_records(rank(iter_many(files or ["-"], errors="yield")), tally):
        pass
    finish(tally, "entropy-rank", quiet)
