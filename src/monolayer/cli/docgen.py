"""Man pages, shell completions (bash, zsh, fish) and README sections generated from the code.

``tools/gen_docs.py`` writes them under ``man/`` and ``completions/``, and into the
marked sections of README.md (see :data:`README_SECTIONS`); a test renders them
again and fails when the committed files have drifted from the code.
The completion scripts are static (they list the subcommands, options and
choices), so they work without running Python at every TAB.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from monolayer import __version__
from monolayer.cli.app import app
from monolayer.errors import __doc__ as EXIT_CODES_DOC
from monolayer.schema import records_markdown

PROG = "monolayer"


@dataclass
class Opt:
    names: list[str]
    help: str
    takes_value: bool
    choices: list[str]
    metavar: str


@dataclass
class Cmd:
    name: str
    summary: str
    description: str
    options: list[Opt]
    arguments: list[str]
    takes_files: bool
    subcommands: list[Cmd] = field(default_factory=list)


def _clean(text: str | None) -> str:
    return inspect.cleandoc(text or "").strip()


_TYPE_NAMES = {Path: "PATH", int: "INTEGER", float: "FLOAT", str: "TEXT"}


def _base_type(annotation: Any) -> Any:
    """The element type of ``X``, ``X | None`` or ``list[X]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and (typing.get_origin(annotation) in (list, typing.Union, types.UnionType)):
        return _base_type(args[0])
    return annotation


def _options(command: Any) -> tuple[list[Opt], list[str], bool]:
    options: list[Opt] = []
    arguments: list[str] = []
    takes_files = False
    for param in command.params:
        if param.param_type_name == "argument":
            metavar = param.metavar or param.name.upper()
            arguments.append(metavar if param.nargs == 1 else f"{metavar.rstrip('.')}...")
            takes_files = True
            continue
        names = [*param.opts, *param.secondary_opts]
        names.sort(key=lambda n: (n.startswith("--"), n))
        base = _base_type(param.type_descriptor.annotation)
        choices = [m.value for m in base] if isinstance(base, type) and issubclass(base, enum.Enum) else []
        takes_value = not param.is_flag
        metavar = ""
        if takes_value:
            metavar = "{" + ",".join(choices) + "}" if choices else _TYPE_NAMES.get(base, "VALUE")
        options.append(Opt(names=names, help=_clean(param.help), takes_value=takes_value,
                           choices=choices, metavar=metavar))
    options.append(Opt(names=["-h", "--help"], help="Show the help and exit.", takes_value=False,
                       choices=[], metavar=""))
    return options, arguments, takes_files


def commands() -> tuple[Cmd, list[Cmd]]:
    """The root command and each subcommand, described from the app."""
    group = typer.main.get_command(app)
    root_opts, _, _ = _options(group)
    root = Cmd(name=PROG, summary=_clean(group.help).splitlines()[0], description=_clean(group.help),
               options=root_opts, arguments=["COMMAND [ARGS]..."], takes_files=False)
    return root, [_describe(name, command) for name, command in group.commands.items()]


def _describe(name: str, command: Any) -> Cmd:
    opts, args, files = _options(command)
    help_text = _clean(command.help)
    extra = command.context_settings.get("allow_extra_args", False)
    nested = getattr(command, "commands", {}) or {}
    subcommands = [_describe(sub, cmd) for sub, cmd in nested.items()]
    if subcommands:
        args = ["[COMMAND [ARGS]...]"]
        # A group's completion offers its subcommands' options and file arguments too.
        opts = opts + [o for sub in subcommands for o in sub.options
                       if o.names not in [x.names for x in opts]]
        files = any(sub.takes_files for sub in subcommands)
    return Cmd(name=name, summary=help_text.splitlines()[0], description=help_text, options=opts,
               arguments=args or (["[ARGS]..."] if extra else []), takes_files=files,
               subcommands=subcommands)


# ---------------------------------------------------------------- man pages

def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _man_paragraphs(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(line.strip() for line in para.splitlines())
        if para.startswith("Example:"):
            out.append(".PP\nExample:\n.PP\n.RS\n.nf\n" + _roff(para[len("Example:"):].strip()) + "\n.fi\n.RE")
        else:
            out.append(".PP\n" + _roff(para))
    return out


def _exit_status() -> str:
    rows = [line.split(None, 1) for line in _clean(EXIT_CODES_DOC).splitlines()
            if re.match(r"^\d+\s", line)]
    return "\n".join(f".TP\n.B {code}\n{_roff(text.strip().replace('``', ''))}" for code, text in rows)


def _man_options(options: list[Opt]) -> list[str]:
    lines = []
    for opt in options:
        names = ", ".join(f"\\fB{_roff(n)}\\fR" for n in opt.names)
        value = f" \\fI{_roff(opt.metavar)}\\fR" if opt.takes_value else ""
        lines += [".TP", names + value, _roff(opt.help) if opt.help else ""]
    return lines


def man_page(cmd: Cmd, subs: list[Cmd] | None = None) -> str:
    full = PROG if cmd.name == PROG else f"{PROG} {cmd.name}"
    page = f"{PROG}-{cmd.name}" if cmd.name != PROG else PROG
    lines = [
        f'.TH "{page.upper()}" "1" "" "{PROG} {__version__}" "User Commands"',
        ".SH NAME",
        f"{_roff(page)} \\- {_roff(cmd.summary)}",
        ".SH SYNOPSIS",
        f".B {_roff(full)}",
        _roff(" ".join(["[OPTIONS]", *cmd.arguments])),
        ".SH DESCRIPTION",
        *_man_paragraphs(cmd.description),
    ]
    if subs:
        lines.append(".SH COMMANDS")
        for sub in subs:
            lines += [".TP", f".B {_roff(sub.name)}", f"{_roff(sub.summary)} See \\fB{PROG}-{sub.name}\\fR(1)."]
    for sub in cmd.subcommands:
        lines += [f".SH COMMAND: {_roff(sub.name.upper())}", f".B {_roff(full)} {_roff(sub.name)}",
                  _roff(" ".join(["[OPTIONS]", *sub.arguments])), *_man_paragraphs(sub.description)]
        lines += _man_options(sub.options)
    own = cmd.options if not cmd.subcommands else [o for o in cmd.options if o.names == ["-h", "--help"]]
    lines += [".SH OPTIONS", *_man_options(own)]
    lines += [".SH EXIT STATUS", _exit_status(), ".SH SEE ALSO"]
    others = [PROG] + [f"{PROG}-{s.name}" for s in (subs or [])] if cmd.name == PROG else [PROG]
    lines.append(", ".join(f"\\fB{_roff(o)}\\fR(1)" for o in others if o != page) or f"\\fB{PROG}\\fR(1)")
    return "\n".join(line for line in lines if line is not None) + "\n"


# ---------------------------------------------------------------- completions

def bash(root: Cmd, subs: list[Cmd]) -> str:
    names = " ".join(s.name for s in subs)
    root_opts = " ".join(n for o in root.options for n in o.names)
    cases = []
    for sub in subs:
        value_opts = [o for o in sub.options if o.takes_value]
        prev_cases = []
        for o in value_opts:
            pattern = "|".join(o.names)
            if o.choices:
                prev_cases.append(f'                {pattern}) COMPREPLY=($(compgen -W "{" ".join(o.choices)}" -- "$cur")); return ;;')
            elif o.metavar == "PATH":
                prev_cases.append(f'                {pattern}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
            else:
                prev_cases.append(f'                {pattern}) COMPREPLY=(); return ;;')
        all_opts = " ".join(n for o in sub.options for n in o.names)
        body = "\n".join(prev_cases)
        cases.append(
            f"        {sub.name})\n"
            f"            case \"$prev\" in\n{body}\n            esac\n" if prev_cases else f"        {sub.name})\n")
        words = " ".join(c.name for c in sub.subcommands)
        other = (f'COMPREPLY=($(compgen -W "{words}" -- "$cur") $(compgen -f -- "$cur"))' if words
                 else 'COMPREPLY=($(compgen -f -- "$cur"))')
        cases[-1] += (f'            if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "{all_opts}" -- "$cur"))\n'
                      f'            else {other}; fi ;;')
    return f"""# bash completion for {PROG} {__version__} -- generated by tools/gen_docs.py, do not edit
_{PROG}() {{
    local cur prev cmd i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{names} {root_opts}" -- "$cur"))
        return
    fi
    case "$cmd" in
{chr(10).join(cases)}
    esac
}}
complete -o default -o filenames -F _{PROG} {PROG}
"""


def _zsh_escape(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    return first.replace("\\", "\\\\").replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_spec(o: Opt) -> list[str]:
    desc = _zsh_escape(o.help)
    exclusive = f"({' '.join(o.names)})" if len(o.names) > 1 else ""
    value = ""
    if o.takes_value:
        if o.choices:
            value = f":{o.names[-1].lstrip('-')}:({' '.join(o.choices)})"
        else:
            value = f":{o.metavar.lower()}:_files" if o.metavar == "PATH" else f":{o.metavar.lower()}: "
    # Repeatable options (lists) stay exclusive only with their own aliases.
    return [f"'{exclusive}{n}[{desc}]{value}'" for n in o.names]


def zsh(root: Cmd, subs: list[Cmd]) -> str:
    described = "\n".join(f"        '{s.name}:{_zsh_escape(s.summary)}'" for s in subs)
    root_specs = " \\\n        ".join(spec for o in root.options for spec in _zsh_spec(o))
    cases = []
    for sub in subs:
        specs = [spec for o in sub.options for spec in _zsh_spec(o)]
        if sub.takes_files:
            specs.append("'*:file:_files'")
        joined = " \\\n                ".join(specs)
        cases.append(f"        {sub.name})\n            _arguments -s \\\n                {joined}\n            ;;")
    return f"""#compdef {PROG}
# zsh completion for {PROG} {__version__} -- generated by tools/gen_docs.py, do not edit

_{PROG}() {{
    local -a commands
    commands=(
{described}
    )
    local curcontext="$curcontext" state line
    _arguments -C \\
        {root_specs} \\
        '1: :->command' \\
        '*:: :->args'
    case $state in
    command)
        _describe -t commands '{PROG} command' commands ;;
    args)
        case $words[1] in
{chr(10).join(cases)}
        esac ;;
    esac
}}

_{PROG} "$@"
"""


def _fish_escape(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    return first.replace("\\", "\\\\").replace("'", "\\'")


def fish(root: Cmd, subs: list[Cmd]) -> str:
    lines = [f"# fish completion for {PROG} {__version__} -- generated by tools/gen_docs.py, do not edit",
             f"complete -c {PROG} -f"]
    names = " ".join(s.name for s in subs)
    for sub in subs:
        lines.append(f"complete -c {PROG} -n 'not __fish_seen_subcommand_from {names}' -a {sub.name} "
                     f"-d '{_fish_escape(sub.summary)}'")
    for o in root.options:
        lines.append(_fish_option(o, f"not __fish_seen_subcommand_from {names}"))
    for sub in subs:
        cond = f"__fish_seen_subcommand_from {sub.name}"
        if sub.takes_files:
            lines.append(f"complete -c {PROG} -n '{cond}' -F")
        lines += [_fish_option(o, cond) for o in sub.options]
    return "\n".join(lines) + "\n"


def _fish_option(o: Opt, condition: str) -> str:
    parts = [f"complete -c {PROG} -n '{condition}'"]
    for n in o.names:
        parts.append(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}")
    if o.takes_value:
        if o.choices:
            parts.append(f"-x -a '{' '.join(o.choices)}'")
        else:
            parts.append("-r -F" if o.metavar == "PATH" else "-x")
    if o.help:
        parts.append(f"-d '{_fish_escape(o.help)}'")
    return " ".join(parts)


def _backend_options_markdown() -> str:
    from monolayer.cli.backend_options import options_markdown

    return options_markdown()


README_SECTIONS = {"records": ("KINDS in src/monolayer/schema.py", records_markdown),
                   "backends": ("each backend's SPEC in src/monolayer/backends/", _backend_options_markdown)}
"""The parts of README.md rendered from the code (NAME: where it comes from, renderer),
each between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; the hand-written text
around them is kept as it is."""


def readme(text: str) -> str:
    """README.md's ``text`` with every section of :data:`README_SECTIONS` rendered again.

    >>> text = readme("Intro.\\n<!-- records:start -->\\nstale\\n<!-- records:end -->\\nMore.\\n"
    ...               "<!-- backends:start -->\\n<!-- backends:end -->\\n")
    >>> print(*text.splitlines()[:5], sep="\\n")
    Intro.
    <!-- records:start -->
    <!-- generated by tools/gen_docs.py from KINDS in src/monolayer/schema.py: edit it there -->
    <BLANKLINE>
    Fields of every record:
    >>> "stale" in text, "<!-- records:end -->\\nMore.\\n<!-- backends:start -->" in text
    (False, True)
    """
    for name, (source, render) in README_SECTIONS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        before, found_start, rest = text.partition(start)
        _, found_end, after = rest.partition(end)
        if not (found_start and found_end) or end in before or start in after:
            raise ValueError(f"README.md needs exactly one '{start}' followed by one '{end}'")
        # Blank lines around the generated part: the markers stay HTML blocks of their own.
        note = f"<!-- generated by tools/gen_docs.py from {source}: edit it there -->"
        text = f"{before}{start}\n{note}\n\n{render()}\n{end}{after}"
    return text


def render_all(repository: Path | None = None) -> dict[str, str]:
    """Every generated file, keyed by its path relative to the repository root.

    With ``repository`` (its root folder), README.md too: its committed text with
    the generated sections rendered again.
    """
    root, subs = commands()
    files = {
        "completions/monolayer.bash": bash(root, subs),
        "completions/_monolayer": zsh(root, subs),
        "completions/monolayer.fish": fish(root, subs),
        "man/monolayer.1": man_page(root, subs),
    }
    for sub in subs:
        files[f"man/monolayer-{sub.name}.1"] = man_page(sub)
    if repository is not None:
        files["README.md"] = readme((repository / "README.md").read_text(encoding="utf-8"))
    return files
