"""Segment Anything through the real loading path: a tiny random SAM saved to a file."""

import hashlib
import re

import numpy as np
import pytest
import tifffile

import torch
import segment_anything  # noqa: F401  (needed by the backend under test)

from monolayer.backends.sam import infer_architecture  # noqa: E402


def without_timing(stdout: str) -> str:
    """The raw JSON Lines bytes with only the timing field cut out."""
    assert stdout.count('"seconds":') == len(stdout.splitlines())
    return re.sub(r',"seconds":[0-9.e+-]+', "", stdout)


def test_promptless_on_a_real_non_square_image(cli, examples, tiny_sam, tmp_path):
    image = examples / "images" / "set30.tif"
    args = ("segment", image, "--model", "sam", "--weights", tiny_sam, "--device", "cpu",
            "--out", tmp_path / "o", "--save-prob")
    run = cli(*args)
    assert run.code == 0, run.stderr
    [r] = run.records
    mask, prob = tifffile.imread(r["mask"]), tifffile.imread(r["prob"])
    assert mask.shape == prob.shape == (1022, 1024) == tifffile.imread(image).shape
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    assert np.array_equal(mask > 0, prob >= 0.5)  # absolute threshold
    assert r["confluence"] == (mask > 0).mean()
    assert r["weights_sha256"] == hashlib.sha256(tiny_sam.read_bytes()).hexdigest()
    assert r["model"] == "sam" and r["method"] == "promptless"
    assert r["params"]["variant"] == "custom-64x2" and r["params"]["device"] == "cpu"
    again = cli(*args)
    assert without_timing(again.stdout) == without_timing(run.stdout)


def test_auto_mode_and_tiling(cli, examples, tiny_sam, tmp_path):
    args = ("segment", examples / "images" / "set30.tif", "-m", "sam", "-w", tiny_sam, "--device", "cpu",
            "--mode", "auto", "--points-per-side", "4", "--out", tmp_path / "a", "--save-prob")
    auto = cli(*args)
    assert auto.code == 0, auto.stderr
    [r] = auto.records
    mask = tifffile.imread(r["mask"])
    assert mask.shape == tifffile.imread(r["prob"]).shape == (1022, 1024)
    assert r["confluence"] == (mask > 0).mean()
    assert r["method"] == "auto" and "generated_masks" in r
    assert without_timing(cli(*args).stdout) == without_timing(auto.stdout)
    crop = tifffile.imread(examples / "images" / "set30.tif")[:300, :420]
    tifffile.imwrite(tmp_path / "crop.tif", crop)
    tiled = cli("segment", tmp_path / "crop.tif", "-m", "sam", "-w", tiny_sam, "--device", "cpu",
                "--tile", "256", "--out", tmp_path / "t")
    assert tiled.code == 0, tiled.stderr
    assert tifffile.imread(tiled.records[0]["mask"]).shape == (300, 420)


def test_bf16_runs_and_batches_match_single_images(cli, examples, tiny_sam, tmp_path):
    img = tifffile.imread(examples / "images" / "set30.tif")
    for name, sl in (("a", np.s_[:256, :320]), ("b", np.s_[256:512, :320])):
        tifffile.imwrite(tmp_path / f"{name}.tif", img[sl])
    single = cli("segment", tmp_path / "a.tif", tmp_path / "b.tif", "-m", "sam", "-w", tiny_sam,
                 "--device", "cpu", "--out", tmp_path / "s")
    batched = cli("segment", tmp_path / "a.tif", tmp_path / "b.tif", "-m", "sam", "-w", tiny_sam,
                  "--device", "cpu", "--batch-size", "2", "--out", tmp_path / "b")
    for s, b in zip(single.records, batched.records):
        assert abs(s["confluence"] - b["confluence"]) < 1e-3
    bf16 = cli("segment", tmp_path / "a.tif", "-m", "sam", "-w", tiny_sam, "--device", "cpu",
               "--precision", "bf16", "--out", tmp_path / "h")
    assert bf16.code == 0, bf16.stderr and bf16.records[0]["params"]["precision"] == "bf16"


def test_unavailable_device_is_an_error_not_a_fallback(cli, examples, tiny_sam, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = cli("segment", examples / "images" / "set30.tif", "-m", "sam", "-w", tiny_sam,
              "--device", "cuda", "--out", tmp_path / "o")
    assert run.code == 69 and "no CUDA device" in run.stderr and run.stdout == ""


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-by-checkpoint",))


def test_pickle_checkpoint_that_runs_code_is_refused(cli, examples, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": Exploit()}, evil)
    run = cli("segment", examples / "images" / "set30.tif", "-m", "sam", "-w", evil, "--out", tmp_path / "o")
    assert run.code == 65 and "refused to load" in run.stderr
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_not_a_sam_checkpoint(cli, examples, tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "x.pth")
    run = cli("segment", examples / "images" / "set30.tif", "-m", "sam", "-w", tmp_path / "x.pth",
              "--out", tmp_path / "o")
    assert run.code == 65 and "not a Segment Anything checkpoint" in run.stderr


@pytest.mark.parametrize("dim,depth,heads,glob,variant", [
    (768, 12, 12, [2, 5, 8, 11], "vit_b"), (1024, 24, 16, [5, 11, 17, 23], "vit_l"),
    (1280, 32, 16, [7, 15, 23, 31], "vit_h")])
def test_variant_inferred_from_tensor_shapes(dim, depth, heads, glob, variant):
    state = {"image_encoder.patch_embed.proj.weight": torch.empty(dim, 3, 1, 1)}
    for i in range(depth):
        rows = 127 if i in glob else 27
        state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = torch.empty(rows, dim // heads)
    arch = infer_architecture(state)
    assert (arch.variant, arch.num_heads, list(arch.global_attn_indexes)) == (variant, heads, glob)
