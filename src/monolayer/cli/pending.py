"""Subcommands that are planned but not built yet: they say so and exit 69, with no output."""

from __future__ import annotations

import typer

from monolayer.cli.common import say_error
from monolayer.errors import EXIT_UNAVAILABLE


def register(app: typer.Typer, name: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        say_error(f"'{name}' is not available yet in this version (see 'monolayer --help')")
        raise typer.Exit(EXIT_UNAVAILABLE)

    command.__doc__ = f"{summary[:-1]} (not available yet: exits 69)."
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                add_help_option=True)(command)
