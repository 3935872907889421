"""``monolayer models``: the backends and published checkpoints, and fetching one explicitly.

Listing imports no model framework: availability is checked with
``importlib.util.find_spec``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from monolayer.backends import BACKENDS
from monolayer.cli.common import cli_errors, stderr_console
from monolayer.records import RecordWriter, new_record
from monolayer.weights import CACHE_ENV, cache_dir, fetch, inventory

app = typer.Typer(help="List segmentation backends and checkpoints; fetch a published checkpoint.",
                  no_args_is_help=False, context_settings={"help_option_names": ["-h", "--help"]})


@app.callback(invoke_without_command=True)
@cli_errors
def models(ctx: typer.Context) -> None:
    """List the backends and the published checkpoints (table on stderr, JSON Lines on stdout).

    Each backend record says whether its framework is installed; each checkpoint
    record gives its official address, SHA-256 and whether it is in the cache
    folder ($MONOLAYER_CACHE, else ~/.cache/monolayer). Nothing is downloaded.

    Example: monolayer models | jq -r 'select(.entry == "checkpoint") | .name'
    """
    if ctx.invoked_subcommand is not None:
        return
    writer = RecordWriter()
    from rich.table import Table

    backends = Table(title="backends", title_justify="left")
    for column in ("name", "ready", "needs weights", "description"):
        backends.add_column(column)
    for spec in BACKENDS.values():
        missing = spec.missing()
        ready = spec.target is not None and not missing
        writer.write(new_record("models", entry="backend", name=spec.name, ready=ready,
                                missing=missing, needs_weights=spec.needs_weights, description=spec.summary))
        backends.add_row(spec.name, "yes" if ready else f"no ({', '.join(missing) or 'not built'})",
                         "yes" if spec.needs_weights else "no", spec.summary)
    checkpoints = Table(title=f"published checkpoints (cache: {cache_dir()}, set ${CACHE_ENV} to move it)",
                        title_justify="left")
    for column in ("name", "backend", "cached", "size", "sha256"):
        checkpoints.add_column(column)
    for row in inventory():
        writer.write(new_record("models", entry="checkpoint", **row))
        size = f"{row['size'] / 1e6:.0f} MB" if row["size"] else "?"
        checkpoints.add_row(row["name"], row["backend"], "yes" if row["cached"] else "no", size,
                            row["sha256"][:16] + "...")
    console = stderr_console()
    console.print(backends)
    console.print(checkpoints)


@app.command("fetch")
@cli_errors
def fetch_command(
    name: Annotated[str, typer.Argument(help="A published checkpoint name, e.g. sam_vit_b.",
                                        show_default=False)],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the server.")] = 10.0,
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    """Download a published checkpoint into the cache, verifying its SHA-256.

    This is the only command that downloads anything. Offline it fails within
    about --timeout seconds with exit code 69; a file with the wrong checksum
    is never kept. Prints one JSON record with the path on success.

    Example: monolayer models fetch sam_vit_b && monolayer segment img/ -m sam -w sam_vit_b -o out/
    """
    path = fetch(name, timeout=timeout, force=force)
    RecordWriter().write(new_record("models", entry="fetched", name=name, path=str(path)))
