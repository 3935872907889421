"""Issue 11, part 1: acquisition metadata (plate, well, site, time) on every segment record."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import blob_image
from monolayer.acquisition import compile_pattern, parse_name, tag_time
from monolayer.errors import DataError, UsageError

# Real LIVECell file names (names only; the images are not used).
LIVECELL = {
    "A172_Phase_C7_1_00d20h00m_4.tif": ("C7", 1, 20.0),
    "A172_Phase_C7_1_01d12h00m_3.tif": ("C7", 1, 36.0),
    "BT474_Phase_D3_1_02d16h00m_1.tif": ("D3", 1, 64.0),
    "Huh7_Phase_A10_1_02d12h00m_3.tif": ("A10", 1, 60.0),
    "MCF7_Phase_F4_2_00d00h00m_4.tif": ("F4", 2, 0.0),
    "SHSY5Y_Phase_A10_1_01d08h00m_2.tif": ("A10", 1, 32.0),
    "SKOV3_Phase_E4_1_02d12h00m_2.tif": ("E4", 1, 60.0),
}


@pytest.mark.parametrize("name, expected", LIVECELL.items())
def test_incucyte_preset_on_real_livecell_names(name, expected):
    fields = parse_name(f"/data/plate/{name}", compile_pattern("incucyte"))
    assert (fields["well"], fields["site"], fields["elapsed_h"]) == expected
    assert fields["time_source"] == "name" and "time" not in fields


def test_incucyte_export_preset_gives_iso_time():
    fields = parse_name("B3_1_2024y05m17d_03h30m.tif", compile_pattern("incucyte-export"))
    assert fields == {"well": "B3", "site": 1, "time": "2024-05-17T03:30:00", "time_source": "name"}
    with pytest.raises(DataError, match="not a date"):
        parse_name("B3_1_2024y02m30d_03h30m.tif", compile_pattern("incucyte-export"))


def test_a_user_regex_with_named_groups():
    pattern = compile_pattern(r"(?P<plate>P\d+)-(?P<well>[A-H]\d+)-s(?P<site>\d+)-(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d)")
    fields = parse_name("P7-B3-s2-2024-05-17T03:00.png", pattern)
    assert fields == {"plate": "P7", "well": "B3", "site": 2, "time": "2024-05-17T03:00:00", "time_source": "name"}
    fields = parse_name("w1_12.5h.tif", compile_pattern(r"w(?P<well>\d)_(?P<elapsed_h>[\d.]+)h"))
    assert fields["elapsed_h"] == 12.5


@pytest.mark.parametrize("spec, words", [
    (r"(?P<wel>[A-H]\d+)", "unknown group 'wel'"),
    (r"[A-H]\d+", "names none of"),
    (r"(?P<well>[A-H", "not a regular expression"),
])
def test_a_bad_pattern_is_a_usage_error(spec, words):
    with pytest.raises(UsageError, match=words):
        compile_pattern(spec)


def test_time_from_tags_never_from_mtime(tmp_path):
    plain = tmp_path / "a.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    assert tag_time(plain) == {}
    tagged = tmp_path / "b.tif"
    tifffile.imwrite(tagged, np.zeros((4, 4), np.uint8), datetime="2024:05:17 03:00:00")
    assert tag_time(tagged) == {"time": "2024-05-17T03:00:00", "time_source": "tiff"}
    jpeg = tmp_path / "c.jpg"
    exif = Image.Exif()
    exif[306] = "2023:01:02 10:20:30"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, exif=exif)
    assert tag_time(jpeg) == {"time": "2023-01-02T10:20:30", "time_source": "exif"}
    broken = tmp_path / "d.tif"
    tifffile.imwrite(broken, np.zeros((4, 4), np.uint8), extratags=[(306, "s", 0, "yesterday at 3", True)])
    assert tag_time(broken) == {}


def test_segment_records_carry_the_metadata(cli, tmp_path):
    folder = tmp_path / "night"
    folder.mkdir()
    for name in ("A172_Phase_C7_1_00d20h00m_4.tif", "A172_Phase_C7_2_00d20h00m_4.tif", "notes.tif"):
        tifffile.imwrite(folder / name, blob_image(seed=len(name)))
    run = cli("segment", folder, "-o", tmp_path / "o", "--name-pattern", "incucyte")
    assert run.code == 1
    good = [r for r in run.records if "error" not in r]
    assert [(r["well"], r["site"], r["elapsed_h"], r["time_source"]) for r in good] == [
        ("C7", 1, 20.0, "name"), ("C7", 2, 20.0, "name")]
    [bad] = [r for r in run.records if "error" in r]
    assert bad["exit_code"] == 65 and "does not match --name-pattern incucyte" in bad["error"]
    assert not (tmp_path / "o" / "notes.mask.tif").exists()
    # Without a pattern: the tag's time or none, said so.
    plain = cli("segment", folder, "-o", tmp_path / "p", "-q")
    assert all(r["time"] is None and r["time_source"] is None for r in plain.records)
    bad_pattern = cli("segment", folder, "-o", tmp_path / "q", "--name-pattern", "(?P<wel>x)")
    assert bad_pattern.code == 2 and bad_pattern.stdout == "" and "unknown group" in bad_pattern.stderr


@pytest.mark.parametrize("name, words", [
    ("B3_nan.tif", "not a finite number"), ("B3_inf.tif", "not a finite number"),
    ("B3_1e999.tif", "not a finite number"),
])
def test_a_non_finite_time_in_a_name_is_an_error_not_null(name, words):
    with pytest.raises(DataError, match=words):
        parse_name(name, compile_pattern(r"(?P<well>[A-Z]\d)_(?P<elapsed_h>.+)"))


def test_the_incucyte_preset_refuses_impossible_clock_times_and_lookalike_digits():
    with pytest.raises(DataError, match="is not a time"):
        parse_name("A172_Phase_C7_1_00d99h99m_4.tif", compile_pattern("incucyte"))
    with pytest.raises(DataError, match="does not match"):
        parse_name("A172_Phase_C\u0667_1_00d20h00m_4.tif", compile_pattern("incucyte"))
