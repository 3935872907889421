"""The ``monolayer`` typer application: registers every subcommand and the global options."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from monolayer import __version__
from monolayer import signals
from monolayer.cli.common import say_error, state
from monolayer.cli.streams import guard_stdout, release_stdout
from monolayer.errors import EXIT_INTERRUPTED, EXIT_IO, MonolayerError, PipeClosed
from monolayer.signals import Terminated

COMMANDS: tuple[tuple[str, str, str, bool], ...] = (
    # (name, module in monolayer.cli, its attribute, whether that is a group of subcommands),
    # in the order --help lists them.
    ("coco2mask", "coco2mask", "coco2mask", False),
    ("segment", "segment", "segment", False),
    ("entropy-rank", "entropy_rank", "entropy_rank", False),
    ("train", "train", "train", False),
    ("al-round", "al_round", "app", True),
    ("evaluate", "evaluate", "evaluate", False),
    ("stats", "stats", "app", True),
    ("models", "models", "app", True),
    ("cellpose-thresholds", "cellpose_thresholds", "cellpose_thresholds", False),
    ("calibrate", "calibrate", "calibrate", False),
    ("growth", "growth", "growth", False),
    ("report", "report", "report", False),
)


def _version(value: bool) -> None:
    if value:
        print(f"monolayer {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Cell confluence from label-free microscopy images."""
    state.debug = debug


def build_app(only: str | None = None) -> typer.Typer:
    """The typer application with every command, or with command ``only`` alone: a run
    imports just the command it runs (``segment`` need not load what ``train`` or
    ``evaluate`` import), while ``--help`` and an unknown name see them all."""
    import importlib

    built = typer.Typer(
        name="monolayer",
        help="Cell confluence from label-free microscopy images.\n\n"
             "Composable commands that read files and write JSON Lines on stdout "
             "(messages go to stderr), so they chain in pipelines:\n\n"
             "monolayer segment images/ --out masks/ | monolayer stats - --field confluence",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    built.callback()(root)
    for name, module, attribute, group in COMMANDS:
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(f"monolayer.cli.{module}"), attribute)
        if group:
            built.add_typer(target, name=name)
        else:
            built.command(name)(target)
    return built


def _command_in(args: list[str]) -> str | None:
    """The command an argument list runs, if it names one: the first argument after the
    root's own flags (none of which takes a value)."""
    for arg in args:
        if not arg.startswith("-"):
            return arg if any(arg == name for name, *_ in COMMANDS) else None
    return None


def __getattr__(name: str) -> typer.Typer:
    # ``app`` (every command) is built when first asked for: docs, tests, completions.
    if name == "app":
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point."""
    if sys.stdout is None:
        # Started with stdout closed (`>&-`): the first file opened would become
        # descriptor 1 and records would go into it. Stop before any work.
        say_error("stdout is closed (give it a file or a pipe, e.g. '> records.jsonl' or '> /dev/null')")
        sys.exit(EXIT_IO)
    guard_stdout()
    # SIGTERM/SIGHUP/SIGINT raise in the main thread (workers are ended and the lock
    # released on the way out), never in the middle of a record; SIGPIPE is ignored so a
    # closed pipe is an error to clean up after, then a quiet exit 141.
    signals.install()
    try:
        code = _run()
    finally:
        signals.restore()
    failed = release_stdout()
    if failed is not None and not code:
        if not isinstance(failed, PipeClosed):
            say_error(str(failed))
        code = failed.exit_code
    if "monolayer.executors" in sys.modules and sys.modules["monolayer.executors"].abandoned_threads():
        # A cancelled model computation is still running (it will not write): end now instead
        # of joining it at interpreter exit, which could take minutes after a SIGTERM.
        import os

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code)
    sys.exit(code)


def _run() -> int:
    try:
        code = build_app(_command_in(sys.argv[1:]))(prog_name="monolayer", standalone_mode=False)
    except typer.Abort:
        say_error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated as exc:  # arrived outside a command (while parsing, say)
        say_error(f"terminated by {exc.name}")
        return exc.exit_code
    except PipeClosed as exc:
        return exc.exit_code
    except MonolayerError as exc:  # stdout failed outside a command (--help, --version)
        say_error(str(exc))
        return exc.exit_code
    except Exception as exc:
        # The parser's usage errors: one line with a hint instead of a boxed panel,
        # so cron logs and `2>&1 | grep` see the same shape as every other error.
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "monolayer"
            message = exc.format_message()
            if message:  # empty when the help was shown for a bare `monolayer`
                say_error(f"{message} (see '{where} --help')")
            return exc.exit_code
        raise
    return code if isinstance(code, int) else 0
