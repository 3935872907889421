"""How a backend declares itself: its options, how it is built and trained, what input it takes.

A backend's module (``backends/<name>/__init__.py`` for the learned ones) holds one
:class:`BackendSpec`, importable without its framework. Everything the CLI knows
about a backend comes from there: which ``segment`` and ``train`` options it
takes (each "not given" unless the user gives it), their defaults, which of
them a checkpoint's sidecar may set, the input normalisation its weights
expect, and where its model class and trainer live. Adding a backend is its
own module plus one line in :data:`monolayer.backends.BACKENDS`.

Parameter precedence, for every option: an explicit flag, then a file given by
a flag (``--thresholds``), then the checkpoint's sidecar, then the default.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from monolayer.errors import UnavailableError

NORMALIZATIONS = ("auto", "none", "percentile")
"""``--normalize``: ``auto`` = what the backend's weights expect (its ``preprocess``);
``none`` = the raw intensities (integers divided by 2**bits, exactly; floats as
stored); ``percentile`` = monolayer's robust 0.5th-99.5th percentile stretch to [0, 1]."""


@dataclass(frozen=True)
class Option:
    """One command-line option a backend takes.

    ``kind`` is the Python type of the value (``float``, ``int``, ``str``, ``bool``,
    ``list`` for repeatable paths); ``default`` is what the backend uses when the
    option is given nowhere (shown in ``--help``); ``sidecar`` marks a value a
    checkpoint's sidecar may supply.
    """

    name: str
    kind: type
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    panel: str = "Model"
    min: float | None = None
    sidecar: bool = False
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    bounds: tuple[float | None, float | None] | None = None
    """Inclusive range of a number (None: open on that side), checked whatever the source."""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be this option's value (type and bounds), or None.

        >>> Option("threshold", float, "", bounds=(0.0, 1.0)).problem(True)
        'True is not a number'
        >>> Option("diameter", str, "", bounds=(1.0, None)).problem("12")
        """
        import math

        numeric = self.kind in (int, float) or self.bounds is not None
        if numeric:
            if isinstance(value, bool):
                return f"{value!r} is not a number"
            if isinstance(value, str) and self.kind is str:
                if value == "auto":
                    return None
                try:
                    value = float(value)
                except ValueError:
                    return f"{value!r} is not a number"
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{value!r:.40} is not a finite number"
            if self.kind is int and not isinstance(value, int):
                return f"{value!r} is not a whole number"
            low, high = self.bounds or (None, None)
            if (low is not None and value < low) or (high is not None and value > high):
                shown = f"[{'' if low is None else low}, {'' if high is None else high}]"
                return f"{value!r} is outside {shown}"
            return None
        if self.choices and value not in self.choices:
            return f"{value!r:.40} is not one of {', '.join(self.choices)}"
        if self.kind is str and not isinstance(value, str):
            return f"{value!r:.40} is not a string"
        return None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


# Options every learned backend shares (segment).
RUNTIME_OPTIONS = (
    Option("weights", str, "Checkpoint file, or the name of a published checkpoint already fetched "
           "into the cache (see 'monolayer models').", metavar="FILE|NAME", short="-w"),
    Option("device", str, "Where to run; an unavailable device is an error.", default="auto",
           choices=("auto", "cpu", "cuda", "mps"), panel="Hardware"),
    Option("precision", str, "auto (bf16 where the device computes it natively: a GPU with bf16, a CPU "
           "with AVX-512 BF16 or AMX; else fp32), fp32 or bf16. params.precision records what ran.",
           default="auto", choices=("auto", "fp32", "bf16"), panel="Hardware"),
    Option("batch_size", int, "Images per forward pass.", default=1, min=1, panel="Hardware"),
    Option("seed", int, "Random seed.", default=0, panel="Hardware"),
)
RUNTIME_NAMES = tuple(o.name for o in RUNTIME_OPTIONS)


@dataclass(frozen=True)
class RuntimeOptions:
    """Options every learned backend takes (``segment --weights/--device/--precision/--seed``)."""

    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    batch_size: int = 1


@dataclass(frozen=True)
class BackendSpec:
    """Everything about a backend that is known without importing its framework."""

    name: str
    summary: str
    target: str
    """``module:Class`` of the model (imported only when the backend is built)."""
    needs_weights: bool
    requires: tuple[str, ...] = ()
    """Python packages the backend imports (checked without importing them)."""
    segment_options: tuple[Option, ...] = ()
    train_options: tuple[Option, ...] = ()
    trainer: str | None = None
    """``module:function`` that trains it (None: nothing to train)."""
    preprocess: str = "percentile"
    """What ``--normalize auto`` gives this backend (see :func:`monolayer.io.images.preprocess`)."""
    prepare: str | None = None
    """``module:function`` turning the given options into (values from files named by
    options, the options made ready for the constructor): e.g. cellpose's --thresholds
    file and --diameter auto. Must live in a module that imports no framework."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Training defaults shown in ``train --help`` (``lr``, ``batch_size``)."""
    train_requires_weights: bool = False
    """Training fine-tunes a given checkpoint (``--weights`` required)."""
    min_side: int = 16
    """Images with a side shorter than this many px are refused (an error, not a number)."""
    uncertainty: str = "entropy"
    """How ``entropy-rank`` ranks this model's records: ``entropy`` of the saved probability
    map, or ``score`` (the mean instance confidence the backend records)."""

    def missing(self) -> list[str]:
        """Required packages that are not installed here (found without importing them)."""
        import importlib.util

        missing = []
        for name in self.requires:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(name)
        return missing

    def require(self, what: str) -> None:
        """Raise :class:`UnavailableError` (exit 69) naming what to install, if anything is missing."""
        missing = self.missing()
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise UnavailableError(f"{what} needs {', '.join(missing)}, which {verb} not installed",
                                   "pip install 'monolayer[models]'")

    def load(self, target: str) -> Any:
        """The object at ``module:name``, its import failures as exit 69."""
        self.require(f"model {self.name!r}")
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnavailableError(f"model {self.name!r} needs {exc.name or exc}, which is not installed",
                                   "pip install 'monolayer[models]'") from None
        return getattr(module, attribute)

    def segment_option(self, name: str) -> Option | None:
        return next((o for o in self.segment_options if o.name == name), None)

    def train_option(self, name: str) -> Option | None:
        return next((o for o in self.train_options if o.name == name), None)
