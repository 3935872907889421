"""stats, the commands not built yet, --version, and the generated docs staying in sync."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monolayer import __version__

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_stats_grouped(cli, tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [
        {"image": "a/x.tif", "model": "m1", "err": 0.1},
        {"image": "a/y.tif", "model": "m1", "err": 0.3},
        {"image": "b/z.tif", "model": "m1", "err": 0.5},
        {"image": "b/w.tif", "model": "m2", "error": "failed"},
    ])
    run = cli("stats", f, "--by", "image:dir", "--field", "err")
    assert run.code == 0, run.stderr
    a, b = run.records
    assert a["image:dir"] == "a" and a["n"] == 2 and a["mean"] == pytest.approx(0.2)
    assert b["image:dir"] == "b" and b["n"] == 1 and b["std"] is None
    assert a["schema"] == "monolayer.stats/1" and a["field"] == "err"
    assert "skipped 1 error record" in run.stderr


def test_stats_csv_and_table_and_stdin(cli, tmp_path):
    records = [{"g": "x", "v": 1}, {"g": "x", "v": 3}]
    text = "".join(json.dumps(r) + "\n" for r in records)
    csv_run = cli("stats", "--by", "g", "--format", "csv", input=text)
    assert csv_run.stdout.splitlines()[0] == "g,field,n,mean,std,median,q1,q3,iqr,min,max"
    assert csv_run.stdout.splitlines()[1].startswith("x,v,2,2.0,")
    table = cli("stats", "-", "--format", "table", input=text)
    assert table.stdout == "" and "mean" in table.stderr


def test_stats_all_numeric_fields_by_default(cli, tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [{"a": 1, "b": 2.5, "c": "text", "d": True}])
    assert [r["field"] for r in cli("stats", f).records] == ["a", "b"]


def test_stats_non_numeric_field_names_the_line(cli, tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [{"v": 1}, {"v": "45%"}])
    run = cli("stats", f, "--field", "v")
    assert run.code == 65 and f"{f}:2: field 'v' is '45%'" in run.stderr


def test_version(cli):
    run = cli("--version")
    assert run.code == 0 and run.stdout.strip() == f"monolayer {__version__}"


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "monolayer", "segment", "x.tif"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "monolayer: error: Missing option '--out' / '-o'. (see 'monolayer segment --help')\n"


def test_generated_docs_match_the_code():
    from monolayer.cli.docgen import render_all

    files = render_all(ROOT)  # with README.md's generated sections
    import tomllib

    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["data-files"]
    # One man page per command, and the wheel ships every one of them.
    assert sorted(p for p in files if p.startswith("man/")) == sorted(shipped["share/man/man1"])
    assert "README.md" in files
    stale = [rel for rel, text in files.items()
             if not (ROOT / rel).exists() or (ROOT / rel).read_text(encoding="utf-8") != text]
    assert not stale, f"run python tools/gen_docs.py: {stale}"


def test_completion_scripts_are_valid_shell():
    subprocess.run(["bash", "-n", str(ROOT / "completions" / "monolayer.bash")], check=True)
    for shell, name in (("zsh", "_monolayer"), ("fish", "monolayer.fish")):
        exe = subprocess.run(["which", shell], capture_output=True, text=True).stdout.strip()
        if exe:
            flag = ["-n"] if shell == "zsh" else ["--no-execute"]
            subprocess.run([exe, *flag, str(ROOT / "completions" / name)], check=True)
