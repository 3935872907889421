"""Expanding INPUT arguments: folders, globs, stdin, duplicates, missing paths."""

import io
from pathlib import Path

import numpy as np
import tifffile

from monolayer.io.inputs import expand_inputs


def make(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tifffile.imwrite(folder / name, np.zeros((2, 2), np.uint8))


def test_folder_glob_file_and_duplicates(tmp_path):
    make(tmp_path / "d", "b.tif", "a.tif", "c.png")
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "d" / ".hidden.tif").write_text("x")
    items = list(expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "a.tif"), str(tmp_path / "d" / "*.tif")]))
    assert [Path(i.image).name for i in items] == ["a.tif", "b.tif", "c.png"]
    assert all(i.error is None for i in items)


def test_recursive_and_exclude(tmp_path):
    make(tmp_path / "d" / "sub", "x.tif")
    make(tmp_path / "d" / "out", "x.mask.tif")
    assert list(expand_inputs([str(tmp_path / "d")]))[0].error  # no images at the top
    items = list(expand_inputs([str(tmp_path / "d")], recursive=True, exclude=tmp_path / "d" / "out"))
    assert [Path(i.image).name for i in items] == ["x.tif"]


def test_missing_and_empty_pattern(tmp_path):
    missing, pattern = expand_inputs([str(tmp_path / "nope.tif"), str(tmp_path / "*.tif")])
    assert "no such file" in missing.error and "matches no images" in pattern.error


def test_stdin_records_paths_and_bad_lines():
    stdin = io.StringIO('{"image": "a.tif"}\n\nb.tif\n{"mask": "x"}\n{broken\n')
    items = list(expand_inputs(["-"], stdin=stdin))
    assert [i.image for i in items[:2]] == ["a.tif", "b.tif"]
    assert "no 'image' field" in items[2].error and items[2].exit_code == 65
    assert "<stdin>:5: not valid JSON" in items[3].error
