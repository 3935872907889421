"""`monolayer models`, explicit fetching (offline, checksum) and weights resolution."""

import dataclasses
import hashlib
import http.server
import subprocess
import sys
import threading
import time

import pytest

from monolayer import weights


@pytest.fixture
def local_checkpoint(monkeypatch, tmp_path):
    """Serve a small file on loopback and register it as the published sam_vit_b."""
    payload = b"not really a checkpoint, but bytes with a known checksum" * 100
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "ckpt.pth").write_bytes(payload)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "srv"), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ckpt.pth"

    def register(sha256: str) -> None:
        entry = dataclasses.replace(weights.PUBLISHED["sam_vit_b"], url=url, sha256=sha256)
        monkeypatch.setitem(weights.PUBLISHED, "sam_vit_b", entry)

    yield payload, register
    server.shutdown()
    server.server_close()


def test_fetch_verifies_and_caches(cli, local_checkpoint, private_cache):
    payload, register = local_checkpoint
    register(hashlib.sha256(payload).hexdigest())
    run = cli("models", "fetch", "sam_vit_b")
    assert run.code == 0, run.stderr
    path = private_cache / "ckpt.pth"
    assert path.read_bytes() == payload and run.records[0]["path"] == str(path)
    listing = {r["name"]: r for r in cli("models").records if r["entry"] == "checkpoint"}
    assert listing["sam_vit_b"]["cached"] is True
    assert weights.resolve("sam_vit_b", "sam").path == path


def test_fetch_with_wrong_checksum_keeps_nothing(cli, local_checkpoint, private_cache):
    _, register = local_checkpoint
    register("0" * 64)
    run = cli("models", "fetch", "sam_vit_b")
    assert run.code == 65 and "expected 000" in run.stderr
    assert list(private_cache.iterdir()) == []


def test_offline_fetch_fails_fast_with_69(cli, monkeypatch):
    # A closed loopback port: as unreachable as a lab without internet, without touching the network.
    entry = dataclasses.replace(weights.PUBLISHED["sam_vit_h"], url="http://127.0.0.1:9/sam_vit_h_4b8939.pth")
    monkeypatch.setitem(weights.PUBLISHED, "sam_vit_h", entry)
    started = time.monotonic()
    run = cli("models", "fetch", "sam_vit_h", "--timeout", "5")
    assert time.monotonic() - started < 10
    assert run.code == 69 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "cannot download sam_vit_h" in run.stderr and "--weights FILE" in run.stderr


def test_unknown_checkpoint_name(cli):
    run = cli("models", "fetch", "sam_vit_x")
    assert run.code == 66 and "choose one of: sam_vit_b" in run.stderr


def test_models_lists_backends_and_checkpoints_without_importing_frameworks():
    code = ("import sys, runpy; sys.argv = ['monolayer', 'models'];\n"
            "try:\n    runpy.run_module('monolayer', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'torchvision', 'cellpose', 'segment_anything') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stderr, proc.stderr
    import json
    records = [json.loads(l) for l in proc.stdout.splitlines()]
    names = {r["name"] for r in records if r["entry"] == "backend"}
    assert names == {"classical", "sam", "cellpose", "maskrcnn", "unet"}
    sams = {r["name"]: r["sha256"] for r in records if r["entry"] == "checkpoint"}
    assert sams["sam_vit_b"] == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"


def test_weights_resolution_errors(tmp_path):
    from monolayer.errors import NoInputError, UnavailableError

    with pytest.raises(UnavailableError, match="needs --weights"):
        weights.resolve(None, "unet")
    with pytest.raises(NoInputError, match="no such weights file"):
        weights.resolve(str(tmp_path / "nope.pt"), "unet")
    with pytest.raises(UnavailableError, match="is a sam checkpoint, not unet"):
        weights.resolve("sam_vit_b", "unet")


def test_cellpose_model_type_is_looked_up_never_downloaded(tmp_path, monkeypatch):
    from monolayer.errors import UnavailableError

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(UnavailableError, match="never downloads"):
        weights.resolve("cyto3", "cellpose")
    (tmp_path / "cytotorch_0").write_bytes(b"x")
    found = weights.resolve("cyto", "cellpose")
    assert found.path == tmp_path / "cytotorch_0" and found.name == "cyto"
