"""Documentation written once: README's record list comes from the schema, docstring examples run."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from monolayer import schema
from monolayer.cli import docgen

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- records:start -->", "<!-- records:end -->"


def readme_text() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def records_section(text: str) -> str:
    return text.split(START, 1)[1].split(END, 1)[0]


def test_readme_output_records_are_the_schema():
    text = readme_text()
    assert text.count(START) == text.count(END) == 1
    # Inside "## Output records", after the hand-written introduction and before the rest.
    section = text.split("## Output records", 1)[1].split("\n## ", 1)[0]
    intro, generated, after = section.partition(START)[0], records_section(text), section.partition(END)[2]
    assert "Every record is one JSON object per line" in intro and "Mask file names" in after
    assert docgen.readme(text) == text, "run python tools/gen_docs.py"
    for kind in schema.KINDS.values():
        assert f"**`{kind.tag}`**" in generated
        for field in kind.fields:
            assert f"| `{field.name}` |" in generated


def test_a_changed_field_doc_is_drift(monkeypatch):
    segment = schema.KINDS["segment"]
    renamed = tuple(dataclasses.replace(f, doc="the picture") if f.name == "image" else f for f in segment.fields)
    monkeypatch.setitem(schema.KINDS, "segment", dataclasses.replace(segment, fields=renamed))
    regenerated = docgen.readme(readme_text())
    assert regenerated != readme_text()
    assert "| `image` | file path | the picture |" in records_section(regenerated)


def test_a_pipe_in_a_doc_stays_in_its_table_cell():
    row = next(line for line in schema.records_markdown().splitlines() if line.startswith("| `abs_confluence"))
    assert row == r"| `abs_confluence_error` | number from 0 to 1 | \|confluence_pred - confluence_true\| |"


@pytest.mark.parametrize("text", ["no markers\n", f"{END}\n{START}\n", f"{START}\nonly a start\n",
                                  f"{START}\n{END}\n{START}\n{END}\n"])
def test_readme_needs_one_pair_of_markers(text):
    with pytest.raises(ValueError, match="records:start"):
        docgen.readme(text)


def test_gen_docs_rewrites_the_section_and_check_reports_drift(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    stale = (f"# x\n\nHand-written.\n\n{START}\nstale\n{END}\n\nAlso hand-written.\n"
             "<!-- backends:start -->\n<!-- backends:end -->\n")
    (tmp_path / "README.md").write_text(stale, encoding="utf-8")

    assert gen_docs.main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().err
    assert gen_docs.main([]) == 0
    written = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert written.startswith("# x\n\nHand-written.\n\n") and f"{END}\n\nAlso hand-written.\n" in written
    assert records_section(written).strip().splitlines()[2:] == schema.records_markdown().strip().splitlines()
    assert gen_docs.main(["--check"]) == 0


def test_pytest_runs_the_package_doctests_from_the_repository_root():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in config["addopts"]
    assert "src/monolayer" in config["testpaths"]
    # What `.ci/run` does (`python -m pytest -q` in the root), limited to one module.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                          "src/monolayer/schema.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "src/monolayer/schema.py::monolayer.schema.records_markdown" in run.stdout
