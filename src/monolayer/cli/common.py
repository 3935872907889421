"""What every subcommand shares: error handling, record output, progress and exit codes."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console

from monolayer.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    EXIT_PIPE,
    MonolayerError,
    PipeClosed,
)
from monolayer.records import RecordWriter
from monolayer.signals import Terminated
from monolayer.schema import item_exit_code

PROG = "monolayer"

# Help panels group options the same way in every subcommand.
INPUT = "Input"
MODEL = "Model"
OUTPUT = "Output"
CHECKS = "Checks"
HARDWARE = "Hardware"
BATCH = "Batch and scale-out"

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    debug = False


state = _State()


def stderr_console() -> Console:
    """A rich console on stderr (stdout carries data only).

    Off a terminal (a log file, a pipe) tables get a wide fixed width instead of
    rich's 80 columns, so numbers are not cut to ellipses in cron logs.
    """
    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=True, highlight=False, width=200)
    return console


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped: every message monolayer
    prints is exactly one line, whatever a file name or an input record holds.

    >>> one_line("bad\\nname\\x1b[31m")
    'bad\\\\nname\\\\x1b[31m'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def say(line: str) -> None:
    # stderr gone too (`2>&1 | head`, a closed descriptor): there is nowhere to say it,
    # and failing here would turn the real exit code into a traceback. (With stderr
    # None, print would fall back to stdout, which carries data only.)
    if sys.stderr is None:
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def say_error(message: str) -> None:
    say(f"{PROG}: error: {one_line(message)}")


def say_warning(message: str) -> None:
    say(f"{PROG}: warning: {one_line(message)}")


def cli_errors(func: F) -> F:
    """Turn exceptions into one stderr line and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except PipeClosed:
            # The reader of stdout went away (`| head`): the command has cleaned up on
            # the way here; stop quietly, as a shell pipeline expects.
            raise typer.Exit(EXIT_PIPE) from None
        except Terminated as exc:
            say_error(f"terminated by {exc.name}; records written so far are complete")
            raise typer.Exit(exc.exit_code) from None
        except MonolayerError as exc:
            if state.debug:
                traceback.print_exc()
            say_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            say_error("interrupted; records written so far are complete")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if state.debug:
                traceback.print_exc()
            say_error(f"internal error: {type(exc).__name__}: {exc} "
                      f"(rerun with '{PROG} --debug ...' for a traceback, and please report it)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


class Tally:
    """Counts successes and failures of a batch and derives the exit code."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed: list[int] = []

    def exit_code(self) -> int:
        if not self.failed:
            return EXIT_OK
        # Nothing succeeded and every failure was of one kind (e.g. the only input
        # is missing): that kind's code says more than a generic "some failed".
        if self.ok == 0 and len(set(self.failed)) == 1:
            return self.failed[0]
        return EXIT_ITEMS_FAILED


def write_records(records: Iterable[dict[str, Any]], tally: Tally,
                  writer: RecordWriter | None = None) -> Iterator[dict[str, Any]]:
    """Write each record to stdout as it comes; report error records on stderr; pass records on."""
    out = writer or RecordWriter()
    for record in records:
        out.write(record)  # holds a signal until the line is out (RecordWriter.write)
        if "error" in record:
            tally.failed.append(item_exit_code(record.get("exit_code", EXIT_ITEMS_FAILED)))
            say_error(record["error"])
        else:
            tally.ok += 1
        yield record


def progress(total: int | None, description: str, quiet: bool):
    """A transient progress bar on stderr, shown only on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = stderr_console()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True,
                    disable=quiet or not console.is_terminal)


def finish(tally: Tally, what: str, quiet: bool, seconds: float | None = None,
           note: str | None = None) -> None:
    """One closing line on stderr, then exit with the batch's code."""
    if not quiet:
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        failed = f", {len(tally.failed)} failed" if tally.failed else ""
        extra = f" ({note})" if note else ""
        print(f"{PROG}: {what}: {tally.ok} done{extra}{failed}{took}", file=sys.stderr, flush=True)
    code = tally.exit_code()
    if code:
        raise typer.Exit(code)
