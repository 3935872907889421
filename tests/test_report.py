"""Issue 11, part 3: overlays and the one-file HTML report for the morning check."""

from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from conftest import blob_image


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_overlay_geometry_and_record(cli, examples, tmp_path):
    big = tmp_path / "imgs"
    big.mkdir()
    real = tifffile.imread(examples / "images" / "set20.tif")[:768, :1024]
    tifffile.imwrite(big / "wide.tif", np.kron(real, np.ones((2, 2), real.dtype)))  # 2048 x 1536
    run = cli("segment", examples / "images" / "set30.tif", big, "-o", tmp_path / "o", "--overlay", "-q")
    assert run.code == 0, run.stderr
    sizes = {}
    for record in run.records:
        path = Path(record["overlay"])
        assert path.name.endswith(".overlay.png") and path.parent == tmp_path / "o"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["overlay_sha256"]
        with Image.open(path) as img:
            assert img.mode == "RGB" and max(img.size) <= 1024
            sizes[path.name] = img.size
            pixels = np.asarray(img)
        assert (pixels == (255, 214, 0)).all(axis=-1).any(), (path.name, record["confluence"])  # the outline
        assert (pixels[:8, :8] == 0).all()  # the confluence label box sits in the corner
    assert sizes == {"set30.overlay.png": (1024, 1022), "wide.overlay.png": (1024, 768)}
    # Without --overlay no picture is written; with it, it is part of what --overwrite removes.
    listed = (tmp_path / "o" / ".monolayer" / "outputs.list").read_text().split()
    assert "wide.overlay.png" in listed


def test_report_is_one_self_contained_page_failures_first(cli, examples, tmp_path):
    seg = cli("segment", examples / "images", tmp_path / "missing.tif", "-o", tmp_path / "o", "--overlay", "-q")
    plain = cli("segment", examples / "images" / "set20.tif", "-o", tmp_path / "p", "-q")
    records = tmp_path / "all.jsonl"
    records.write_text(seg.stdout + plain.stdout + json.dumps(
        {"schema": "monolayer.growth/1", "well": "B3", "n": 9, "confluence_last": 0.61, "harvest_at": 0.8,
         "hours_to_harvest": 20.0, "hours_to_harvest_low": 14.0, "hours_to_harvest_high": 27.0,
         "eta": "2026-12-02T23:00:00", "doubling_time_h": 30.0, "flags": []}) + "\n")
    out = tmp_path / "r" / "report.html"
    run = cli("report", records, "-o", out, "--alert-within", "24")
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    text = out.read_text(encoding="utf-8")
    parser = Collect()
    parser.feed(text)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 4 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert not any(tag in ("script", "link", "iframe") for tag, _ in parser.tags)
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            assert not attrs.get(name, "data:").split(":")[0] in ("http", "https", "file"), (tag, attrs)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    body = " ".join(parser.text)
    assert body.index("Failures") < body.index("Growth and harvest forecast") < body.index("Images")
    assert "missing.tif" in body and "20.0" in body and "14.0–27.0" in body
    assert "class='alert'" in text  # the well reaching 80 % within 24 h stands out


def test_report_names_a_picture_it_cannot_show_instead_of_leaving_it_out(cli, small_images, tmp_path):
    seg = cli("segment", small_images, "-o", tmp_path / "o", "-q")
    (tmp_path / "s.jsonl").write_text(seg.stdout)
    first = Path(seg.records[0]["mask"])
    first.write_bytes(Path(seg.records[1]["mask"]).read_bytes())
    run = cli("report", tmp_path / "s.jsonl", "-o", tmp_path / "r.html")
    assert run.code == 1 and "1 record(s) could not be shown" in run.stderr
    text = (tmp_path / "r.html").read_text()
    assert "cannot show" in text and "is not the file this record was written with" in text
    assert text.index("is not the file this record was written with") < text.index("Images")  # a failure, first
    assert text.count("data:image/png;base64,") == 1
    # A record with only an ISO time among records with elapsed hours is never silently out of the forecast.
    records = [dict(r, well="B3", elapsed_h=float(i)) for i, r in enumerate(seg.records[1:] * 3)]
    records.append(dict(seg.records[1], well="C4", time="2024-05-17T03:00:00"))
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = cli("report", tmp_path / "w.jsonl", "--harvest-at", "0.5", "-o", tmp_path / "w.html")
    assert run.code == 1
    assert "left out of the forecast: no elapsed_h" in (tmp_path / "w.html").read_text()


def test_report_without_records_is_an_error(cli, tmp_path):
    (tmp_path / "e.jsonl").write_text(json.dumps({"schema": "monolayer.stats/1", "field": "x", "n": 1}) + "\n")
    run = cli("report", tmp_path / "e.jsonl", "-o", tmp_path / "r.html")
    assert run.code == 66 and not (tmp_path / "r.html").exists()


def test_report_forecasts_wells_from_segment_records_with_their_curves(cli, tmp_path):
    folder = tmp_path / "night"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for hour in range(0, 84, 12):
        count = 2 + hour // 6
        centers = [tuple(int(v) for v in rng.integers(16, 240, 2)) for _ in range(count)]
        tifffile.imwrite(folder / f"MSC_Phase_B3_1_{hour // 24:02d}d{hour % 24:02d}h00m_1.tif",
                         blob_image(shape=(256, 256), centers=centers, seed=hour))
    seg = cli("segment", folder, "-o", tmp_path / "o", "--name-pattern", "incucyte", "--overlay", "-q")
    assert seg.code == 0 and all(r["well"] == "B3" for r in seg.records)
    (tmp_path / "s.jsonl").write_text(seg.stdout)
    run = cli("report", tmp_path / "s.jsonl", "--harvest-at", "0.5", "-o", tmp_path / "r.html")
    assert run.code == 0, run.stderr
    text = (tmp_path / "r.html").read_text()
    assert text.count("data:image/png;base64,") == 7 + 1  # seven overlays and the growth plot
    assert "alt='growth curves'" in text and "<td>B3</td>" in text
    # Without wells there is nothing to forecast per well: a clear usage error.
    plain = cli("segment", folder, "-o", tmp_path / "p", "-q")
    (tmp_path / "p.jsonl").write_text(plain.stdout)
    run = cli("report", tmp_path / "p.jsonl", "--harvest-at", "0.5", "-o", tmp_path / "x.html")
    assert run.code == 2 and "--name-pattern" in run.stderr and not (tmp_path / "x.html").exists()
