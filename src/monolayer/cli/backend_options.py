"""Backend options on the command line, built from the backends' own declarations.

Typer reads a command's options from its function's signature: :func:`with_backend_options`
adds one option per name that any backend declares (``SPEC.segment_options`` or
``SPEC.train_options``), with a help text naming the models it applies to. The
command receives them as keyword arguments, all None unless given, and
:func:`resolve` turns them into the chosen backend's values, in the precedence
explicit flag > file given by a flag > checkpoint sidecar > default, refusing an
option that belongs to another model.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS, BackendSpec, Option
from monolayer.backends._spec import RUNTIME_NAMES
from monolayer.errors import DataError, UsageError

PANELS = {"Model": "Model", "Hardware": "Hardware"}


@dataclass
class Merged:
    """One command-line option and the backends that declare it."""

    option: Option
    owners: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)


def declared(command: str, models: tuple[str, ...] | None = None) -> dict[str, Merged]:
    """Every option any backend (or any of ``models``) declares for ``command`` ("segment" or
    "train"), by name."""
    merged: dict[str, Merged] = {}
    for spec in BACKENDS.values():
        if models is not None and spec.name not in models:
            continue
        for option in spec.segment_options if command == "segment" else spec.train_options:
            entry = merged.setdefault(option.name, Merged(option))
            entry.owners.append(spec.name)
            entry.helps[spec.name] = option.help
            if option.default is not None:
                entry.defaults[spec.name] = option.default
    return merged


def owners_text(entry: Merged) -> str:
    return ", ".join(entry.owners)


def _help(entry: Merged) -> str:
    if len(set(entry.helps.values())) == 1:
        return f"{owners_text(entry)}: {entry.option.help}"
    return " ".join(f"{m}: {h}" for m, h in entry.helps.items())


def _default_text(entry: Merged) -> str | bool:
    """What ``[default: ...]`` shows: the value, or each model's where they differ."""
    values = list(entry.defaults.values())
    if not values:
        return False
    if len(set(map(repr, values))) == 1:
        return str(values[0])
    return ", ".join(f"{m} {v}" for m, v in entry.defaults.items())


def _annotation(command: str, entry: Merged) -> Any:
    option = entry.option
    kind: Any = option.kind
    if option.choices:
        kind = enum.Enum(f"{command}_{option.name}", {c: c for c in option.choices}, type=str)
    elif option.kind is list:
        kind = list[Path]
    extra = {"min": option.min} if option.min is not None else {}
    if option.metavar:
        extra["metavar"] = option.metavar
    names = (option.cli_flag, option.short) if option.short else (option.cli_flag,)
    info = typer.Option(*names, help=_help(entry), rich_help_panel=PANELS.get(option.panel, option.panel),
                        show_default=_default_text(entry), **extra)
    return Annotated[kind | None, info]


def with_backend_options(command: str, skip: tuple[str, ...] = (),
                         models: tuple[str, ...] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command function (whose last parameter is ``**backend_options``) one typer
    option per declared backend option (of ``models`` only, if given: the help then names
    only them), inserted before its ``quiet`` parameter."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=_annotation(command, entry))
                 for name, entry in declared(command, models).items() if name not in skip]
        at = next((i for i, p in enumerate(params) if p.name == "quiet"), len(params))
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        func.__signature__ = signature.replace(parameters=params[:at] + added + params[at:])  # type: ignore[attr-defined]
        return func

    return decorate


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (None means not given), enum values unwrapped."""
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in values.items() if v is not None}


def refuse_foreign(spec: BackendSpec, options: dict[str, Any], command: str) -> None:
    """An option of another model is a usage error naming who owns it (never ignored)."""
    mine = {o.name for o in (spec.segment_options if command == "segment" else spec.train_options)}
    merged = declared(command)
    for name in options:
        if name not in mine:
            entry = merged[name]
            what = "training --model" if command == "train" else "--model"
            raise UsageError(f"{entry.option.cli_flag} does not apply to {what} {spec.name}",
                             f"it applies to: {owners_text(entry)}")


@dataclass
class Resolved:
    """A backend's option values and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]


def resolve(spec: BackendSpec, flags: dict[str, Any], from_file: dict[str, Any],
            sidecar: dict[str, Any] | None, command: str = "segment") -> Resolved:
    """Each of ``spec``'s options: explicit flag > file given by a flag > the checkpoint's
    sidecar > the declared default (options without any stay unset)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    sidecar_params = (sidecar or {}).get("params") or {}
    for option in spec.segment_options if command == "segment" else spec.train_options:
        if option.name in flags:
            values[option.name], sources[option.name] = flags[option.name], "flag"
        elif option.name in from_file:
            values[option.name], sources[option.name] = from_file[option.name], "file"
        elif option.sidecar and option.name in sidecar_params:
            values[option.name], sources[option.name] = sidecar_params[option.name], "sidecar"
        elif option.default is not None:
            values[option.name], sources[option.name] = option.default, "default"
        if option.name in values and option.kind is not list:
            # Checked whatever its source: a sidecar's or file's value names that file, never a flag
            # the user did not give; a boolean is never taken for a number.
            problem = option.problem(values[option.name])
            source = sources[option.name]
            if problem and source == "flag":
                raise UsageError(f"{option.cli_flag} {problem}")
            if problem:
                where = (sidecar or {}).get("path", "the checkpoint's sidecar") if source == "sidecar" else \
                    "the file given by a flag"
                raise DataError(f"{where}: {option.name} {problem}", "fix or delete that file")
    return Resolved(values, sources)


@dataclass
class ModelSetup:
    """Everything decided about the model before it is built: constructor options, the
    input contract (normalisation, resize), and where each value came from."""

    kwargs: dict[str, Any]
    normalize: str
    resize: int | None
    sources: dict[str, str]
    provenance: dict[str, Any]
    declared: tuple[str, ...] = ()
    qc_reference: dict[str, Any] | None = None
    """From a ``--params`` file: the calibration images' range of image-quality measures."""


def setup_model(spec: BackendSpec, options: dict[str, Any], *, normalize: str = "auto",
                resize: int | None = None, ignore_sidecar: bool = False,
                command: str = "segment", params_file: Path | None = None) -> ModelSetup:
    """Resolve a backend's options: explicit flag > file given by a flag > the checkpoint's
    sidecar > default; an option of another model is a usage error naming its owners.
    ``params_file``: a ``calibrate`` file (``segment --params``), a file layer of its own."""
    import importlib

    flags = given(options)
    refuse_foreign(spec, flags, command)
    spec.require(f"model {spec.name!r}")  # before anything imports its framework: exit 69, not 70
    from_file: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    if spec.prepare is not None:
        module, name = spec.prepare.split(":")
        from_file, flags = getattr(importlib.import_module(module), name)(flags)
        if from_file.get("_source"):
            provenance["thresholds"] = from_file.pop("_source")
    calibrated: dict[str, Any] = {}
    qc_reference = None
    layer = None
    if params_file is not None:
        from monolayer.calibrate import file_layer

        layer = file_layer(params_file, spec, flags)
        calibrated, provenance["params_file"], qc_reference = layer.kwargs, layer.provenance, layer.qc_reference
        from_file.update(layer.values)
    sidecar = None
    if spec.needs_weights and flags.get("weights") and not ignore_sidecar:
        weights = Path(str(flags["weights"])).expanduser()
        if weights.is_file():
            from monolayer.sidecar import find_sidecar

            sidecar = find_sidecar(weights, spec.name)
    resolved = resolve(spec, flags, from_file, sidecar)
    mode = spec.preprocess if normalize == "auto" else normalize
    if sidecar is not None:
        provenance["sidecar"] = {"path": sidecar["path"], "weights_sha256": sidecar["weights_sha256"]}
        for name, value, flag in (("normalize", normalize, "--normalize"), ("resize", resize, "--resize")):
            wanted = sidecar[name]
            if name == "normalize":
                mode = wanted if value == "auto" else mode
                clash = value != "auto" and mode != wanted
            else:
                clash = value is not None and value != wanted
                resize = wanted if value is None else resize
            if clash:
                raise UsageError(f"{flag} {value} contradicts the checkpoint, which was trained with "
                                 f"{flag} {wanted} ({sidecar['path']})",
                                 "drop the flag, or pass --ignore-sidecar to use the checkpoint without it")
    if layer is not None:  # the file's values were fitted under its normalisation and resize
        layer.check_input(mode, resize)
    values = dict(resolved.values)
    kwargs: dict[str, Any] = {}
    if any(name in values for name in RUNTIME_NAMES):
        from monolayer.backends._spec import RuntimeOptions

        kwargs["runtime"] = RuntimeOptions(**{k: values.pop(k) for k in RUNTIME_NAMES if k in values})
    kwargs.update(values)
    kwargs.update(calibrated)
    return ModelSetup(kwargs, mode, resize, resolved.sources, provenance,
                      tuple(o.name for o in spec.segment_options), qc_reference)


def describe_setup(backend: Any, setup: ModelSetup) -> dict[str, Any]:
    """The backend's record fields with the input contract and the sources of its values,
    after checking that a sidecar or thresholds file was made for these very weights."""
    described = backend.describe()
    for what, info in setup.provenance.items():
        expected = info.get("weights_sha256")
        if expected is not None and expected != described.get("weights_sha256"):
            # A calibrate file for other weights is a wrong pairing of arguments (exit 2).
            raise (UsageError if what == "params_file" else DataError)(f"{info['path']} was made for other weights ({expected[:12]}...) than "
                            f"{described.get('weights')} ({str(described.get('weights_sha256'))[:12]}...)",
                            f"use the {what} file written for these weights, or none")
    params = described.get("params", {})
    sources = dict(setup.sources)
    for name in params:  # a declared value nobody gave comes from the weights (cellpose's diam_labels)
        if name not in sources and name in setup.declared:
            sources[name] = "checkpoint"
    for what, info in setup.provenance.items():
        if info.get("weights_sha256") is None and described.get("weights_sha256") is not None:
            from monolayer.cli.common import say_warning

            say_warning(f"{info['path']} does not say which weights it was made for; it cannot be checked")
    described["params"] = {**params, "normalize": setup.normalize,
                           "resize": setup.resize, "sources": sources, **setup.provenance}
    return described


def options_markdown() -> str:
    """The README's table of model options, generated from the backends' declarations."""
    lines = ["| command | option | models | default | from the sidecar | what |", "|---|---|---|---|---|---|"]
    for command in ("segment", "train"):
        for entry in declared(command).values():
            option = entry.option
            default = _default_text(entry) or ""
            sidecar = "yes" if option.sidecar else ""
            text = " ".join(h for h in dict.fromkeys(entry.helps.values())).replace("|", "\\|")
            lines.append(f"| `{command}` | `{option.cli_flag}` | {', '.join(entry.owners)} | {default} | "
                         f"{sidecar} | {text} |")
    return "\n".join(lines) + "\n"
