"""One exception hierarchy; each class carries the exit code the CLI returns for it.

Exit codes (documented in the README and the man pages):

====  =========================================================
0     success
1     some items failed, or a ``--fail-under``/``--fail-over`` check failed
2     usage error (bad option or argument)
3     alert: ``growth --alert-within`` found a culture due for harvest (not a failure)
65    bad input data (unreadable image, malformed JSON Lines or COCO)
66    missing input (no such file, no images found)
69    backend or weights unavailable
70    internal error (a bug: please report it)
73    an output folder or file cannot be created
74    I/O error while writing output (disk full, stdout full or closed)
75    temporary failure (another run holds the output lock)
129   ended by SIGHUP (records written so far are complete; rerun with ``--skip-existing``)
130   interrupted (Ctrl-C)
141   the reader of stdout went away (``| head``): a quiet stop, workers ended first
143   ended by SIGTERM (records written so far are complete; rerun with ``--skip-existing``)
====  =========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2
EXIT_ALERT = 3
"""``growth --alert-within``: some culture reaches the harvest level soon (every record was written)."""
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_INTERNAL = 70
EXIT_CANTCREAT = 73
EXIT_IO = 74
EXIT_TEMPFAIL = 75
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a pipeline stage whose reader went away."""


class MonolayerError(Exception):
    """A user-facing failure: a one-line message, an optional hint, an exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(MonolayerError):
    """The command line asks for something that cannot be done as stated."""

    exit_code = EXIT_USAGE


class DataError(MonolayerError):
    """An input file exists but its content is wrong (corrupt image, bad JSON, bad COCO)."""

    exit_code = EXIT_DATA


class NoInputError(MonolayerError):
    """An input path does not exist, or a folder holds no images."""

    exit_code = EXIT_NO_INPUT


class UnavailableError(MonolayerError):
    """A backend, its framework or its weights cannot be used here."""

    exit_code = EXIT_UNAVAILABLE


class OutputError(MonolayerError):
    """Writing an output file failed (disk full, permission denied, ...)."""

    exit_code = EXIT_IO


class CantCreateError(MonolayerError):
    """An output folder or file cannot be created (under a regular file, read-only parent, ...)."""

    exit_code = EXIT_CANTCREAT


class StdoutError(OutputError):
    """stdout cannot take the records (``> /dev/full``, a device error)."""


class PipeClosed(OutputError):
    """The reader of stdout went away (``| head -1``): the run stops quietly, exit 141."""

    exit_code = EXIT_PIPE


class CheckFailed(MonolayerError):
    """A scripted threshold check (``--fail-under``/``--fail-over``) did not hold."""

    exit_code = EXIT_ITEMS_FAILED


class InternalError(MonolayerError):
    """Something that should not happen did: a bug in monolayer or a backend."""

    exit_code = EXIT_INTERNAL
