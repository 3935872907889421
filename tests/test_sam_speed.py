"""SAM's fused encoder attention is faithful to segment-anything's in fp32 and in bf16, batches
reproduce single images, and --precision auto (the default) picks bf16 only where the hardware
computes it natively."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import segment_anything  # noqa: F401  (needed by the backend under test)
from segment_anything.modeling.image_encoder import Attention
from segment_anything.utils.transforms import ResizeLongestSide

from monolayer import devices
from monolayer.backends._spec import RuntimeOptions
from monolayer.backends.sam import fast
from monolayer.backends.sam.model import SamBackend, load_sam, prepare, promptless_logits
from monolayer.errors import UsageError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "usiigaci" / "images"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def relpos_sam(sensitive_sam, tmp_path_factory) -> Path:
    """The sensitive tiny SAM with random relative-position tables (std 0.5): a fresh SAM's are
    zero, which would leave the bias, the part the fused attention rewrites, untested."""
    state = torch.load(sensitive_sam, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    for key in state:
        if ".rel_pos_" in key:
            state[key] = torch.randn(state[key].shape, generator=gen) * 0.5
    path = tmp_path_factory.mktemp("sam") / "relpos_sam.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def grays() -> list[np.ndarray]:
    """The three example images as an 8-bit camera stores them (16-bit / 257), as v / 255."""
    return [np.round(tifffile.imread(p) / 257).astype(np.float32) / 255 for p in sorted(EXAMPLES.glob("*.tif"))]


def _probs(model, images: list[np.ndarray], bf16: bool) -> list[np.ndarray]:
    """The promptless pipeline, all ``images`` through the encoder in one batch."""
    prepared = [prepare(model, ResizeLongestSide(1024), g, CPU) for g in images]
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            embeddings = model.image_encoder(torch.cat([x for x, _ in prepared]))
        return [torch.sigmoid(promptless_logits(model, embeddings[i: i + 1].float(), size, g.shape)).numpy()
                for i, ((_, size), g) in enumerate(zip(prepared, images))]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _swapped_bias(self, x):
    """A transposition bug: the row and column terms of the bias exchanged."""
    terms = fast._rel_pos_terms
    try:
        fast._rel_pos_terms = lambda q, module, size: terms(q, module, size)[::-1]
        return fast.attention_forward(self, x)
    finally:
        fast._rel_pos_terms = terms


def _set_forward(model, forward) -> None:
    import types

    for module in model.image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(forward, module)


# -- the fused attention --------------------------------------------------------------------------


def test_loading_installs_the_fused_attention_on_every_encoder_block(tiny_sam):
    model, _ = load_sam(tiny_sam)
    attentions = [m for m in model.image_encoder.modules() if isinstance(m, Attention)]
    assert len(attentions) == 2
    assert all(m.forward.__func__ is fast.attention_forward for m in attentions)
    assert "forward" not in vars(Attention(8, 2))  # the library's class itself is untouched
    assert set(model.state_dict()) == set(torch.load(tiny_sam, weights_only=True))


@pytest.fixture(scope="module")
def maps(relpos_sam, grays):
    """Prob maps of the example images: library and fused attention, fp32 and bf16 autocast."""
    model, _ = load_sam(relpos_sam)
    model.eval()
    out = {("fused", "fp32"): _probs(model, grays, False)}
    _set_forward(model, _swapped_bias)
    out["swapped", "bf16"] = _probs(model, grays, True)
    _set_forward(model, fast.attention_forward)
    fast.uninstall(model)
    assert not any("forward" in vars(m) for m in model.image_encoder.modules())
    out["library", "fp32"], out["library", "bf16"] = _probs(model, grays, False), _probs(model, grays, True)
    model, _ = load_sam(relpos_sam)
    fast.prepare_for_autocast(model.eval(), torch.bfloat16)  # as the backend runs bf16
    out["fused", "bf16"] = _probs(model, grays, True)
    return out


def test_fused_attention_equals_segment_anythings_in_fp32(maps):
    for fused, library in zip(maps["fused", "fp32"], maps["library", "fp32"]):
        assert 0.1 < (library >= 0.5).mean() < 0.9  # sensitive: a real map, not a constant
        assert float(np.abs(fused - library).max()) < 1e-4


def test_fused_attention_in_bf16_is_as_faithful_as_segment_anythings_bf16(maps):
    """bf16 keeps 8 significant bits; in these sensitive weights (logits scaled 60x) the library's
    own bf16 map is about 0.03 (max) from its fp32 map. Ours rounds at other points (scores, bias
    sums and probabilities stay fp32 inside the fused kernel; the patch embedding and the neck run
    in fp32), so matching the library's bf16 rounding to 1e-3 is not a property of correct maths;
    what is: our bf16 map is closer to the exact (fp32) map than the library's bf16 map is, its
    mask agrees with fp32's, and its distance to the library's bf16 is of bf16's own size -- while
    a real bug is far outside it."""
    for fp32, lib16, ours16, bug16 in zip(maps["library", "fp32"], maps["library", "bf16"],
                                          maps["fused", "bf16"], maps["swapped", "bf16"]):
        library_err, ours_err = np.abs(lib16 - fp32), np.abs(ours16 - fp32)
        assert 1e-3 < library_err.max() < 0.06  # bf16's own resolution here, for the record
        assert ours_err.max() < library_err.max() and ours_err.mean() < 0.8 * library_err.mean()
        assert _iou(ours16 >= 0.5, fp32 >= 0.5) >= 0.99
        assert float(np.abs(ours16 - lib16).max()) < 1.5 * library_err.max()
        # the tolerance catches a real error: a transposed bias is 20x outside it
        assert float(np.abs(bug16 - lib16).max()) > 10 * library_err.max()
        assert _iou(bug16 >= 0.5, fp32 >= 0.5) < 0.95


def test_fused_attention_with_query_blocks_matches_one_block(relpos_sam, monkeypatch):
    model, _ = load_sam(relpos_sam)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        monkeypatch.setattr(fast, "QUERY_BLOCK", 64 * 64)  # the whole grid in one call
        whole = model.image_encoder(x)
        monkeypatch.setattr(fast, "QUERY_BLOCK", 64 * 5)  # 5 rows a block, a ragged last block
        blocked = model.image_encoder(x)
    assert torch.allclose(whole, blocked, atol=1e-5)


def test_fused_attention_in_and_out_of_inference_mode_and_under_autograd(relpos_sam):
    """The reused bias buffer is made in inference mode by segment; training then runs the
    same process's encoder under no_grad, and gradients must still reach the tables."""
    model, _ = load_sam(relpos_sam)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        inferred = model.image_encoder(x)
    with torch.no_grad():
        plain = model.image_encoder(x)
    graded = model.image_encoder(x)
    graded.square().mean().backward()
    assert torch.equal(inferred, plain) and torch.allclose(graded.detach(), plain, atol=1e-4)
    global_block = model.image_encoder.blocks[1].attn
    assert global_block.rel_pos_h.grad is not None and global_block.rel_pos_h.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h, w", [(14, 14), (3, 5), (40, 40)])
def test_window_bias_product_is_the_broadcast_sum_bit_for_bit(dtype, h, w):
    gen = torch.Generator().manual_seed(0)
    rel_h = torch.randn(2, 3, h, w, h, generator=gen).to(dtype)
    rel_w = torch.randn(2, 3, h, w, w, generator=gen).to(dtype)
    bias = fast._small_bias(rel_h, rel_w).view(2, 3, h, w, h, w)
    assert bias.dtype == dtype and torch.equal(bias, rel_h[..., None] + rel_w[..., None, :])


def test_prepared_for_autocast_stores_block_weights_cast_and_keeps_the_ends_fp32(relpos_sam, grays):
    model, _ = load_sam(relpos_sam)
    model.eval()
    plain = _probs(model, grays[:1], True)[0]
    assert fast.prepare_for_autocast(model, torch.bfloat16) == 2 * 4  # qkv, proj, lin1, lin2 per block
    encoder = model.image_encoder
    assert encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert encoder.blocks[0].norm1.weight.dtype == torch.float32  # autocast keeps LayerNorm fp32
    assert encoder.patch_embed.proj.weight.dtype == encoder.neck[0].weight.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert encoder.patch_embed(torch.zeros(1, 3, 32, 32)).dtype == torch.float32
    prepared = _probs(model, grays[:1], True)[0]
    exact = _probs(load_sam(relpos_sam)[0].eval(), grays[:1], False)[0]
    assert np.abs(prepared - exact).mean() < 0.8 * np.abs(plain - exact).mean()


def test_patch_embedding_output_is_token_major_and_unchanged(relpos_sam):
    """segment-anything's PatchEmbed returns a permuted view; every block read the token
    stream strided after it (half the encoder's time on a CPU). Ours is the same values, contiguous."""
    model, _ = load_sam(relpos_sam)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ours = model.image_encoder.patch_embed(x)
        library = type(model.image_encoder.patch_embed).forward(model.image_encoder.patch_embed, x)
        assert not library.is_contiguous() and ours.is_contiguous() and torch.equal(ours, library)
        fast.prepare_for_autocast(model, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prepared = model.image_encoder.patch_embed(x)
        assert prepared.is_contiguous() and torch.equal(prepared, library)


def test_prepared_blocks_compute_the_librarys_block_and_leave_a_callers_tensor_alone(relpos_sam):
    from segment_anything.modeling.image_encoder import Block

    model, _ = load_sam(relpos_sam)
    fast.prepare_for_autocast(model.eval(), torch.bfloat16)
    blocks = [m for m in model.image_encoder.modules() if isinstance(m, Block)]
    assert blocks and all(m.forward.__func__ is fast.block_forward for m in blocks)
    x = torch.randn(1, 64, 64, model.image_encoder.pos_embed.shape[-1])
    for block in blocks:  # one windowed block, one global
        kept = x.clone()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            ours = block(x)
            library = type(block).forward(block, x)
        assert torch.equal(x, kept)  # a tensor the caller holds is never added into
        assert ours.dtype == library.dtype == torch.float32
        # bias and GELU on the fp32 accumulator: bf16's resolution apart, no more
        scale = float(library.abs().max())
        assert float((ours - library).abs().max()) < 0.02 * scale
        if fast._fused_linear_available():
            assert float((ours - library).abs().max()) > 0  # (the fused path did run)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            held = x.clone()
            assert torch.equal(block(held), ours) and torch.equal(held, x)  # not even an inference tensor
        # with gradients on, the library's own forward runs, and gradients flow
        with torch.autocast("cpu", dtype=torch.bfloat16):
            graded = block(x)
        graded.float().square().mean().backward()
        assert block.mlp.lin1.weight.grad is not None and block.attn.qkv.weight.grad is not None
        assert torch.allclose(graded.detach(), library, atol=0.01 * scale)


def test_in_place_residuals_never_change_what_a_hook_holds(relpos_sam):
    """The encoder adds residuals into its own token stream in place; a forward hook that keeps
    a block's input or output (feature extraction) must still see the values as they were."""
    model, _ = load_sam(relpos_sam)
    fast.prepare_for_autocast(model.eval(), torch.bfloat16)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model.image_encoder(x)
        held: list[tuple[torch.Tensor, torch.Tensor]] = []
        handles = [b.register_forward_hook(lambda _m, i, o: held.append((i[0], o))) for b in model.image_encoder.blocks]
        hooked = model.image_encoder(x)
        snapshots = [(i.clone(), o.clone()) for i, o in held]
        for h in handles:
            h.remove()
        model.image_encoder(x)  # another call must not touch the tensors kept from the last
    assert torch.equal(plain, hooked)
    for (i, o), (i0, o0) in zip(held, snapshots):
        assert torch.equal(i, i0) and torch.equal(o, o0)
    assert not torch.equal(held[0][0], held[0][1])  # input and output are distinct tensors


def test_bf16_runs_where_onednn_has_no_bf16_matmul(relpos_sam, grays, monkeypatch):
    """An explicit --precision bf16 on a CPU without AVX-512 (allowed, emulated): the fused
    oneDNN op would fail there, so the plain layers run."""
    monkeypatch.setattr(fast, "_onednn_bf16", lambda: False)
    model, _ = load_sam(relpos_sam)
    fast.prepare_for_autocast(model.eval(), torch.bfloat16)
    [prob] = _probs(model, grays[:1], True)
    exact = _probs(load_sam(relpos_sam)[0].eval(), grays[:1], False)[0]
    assert _iou(prob >= 0.5, exact >= 0.5) >= 0.99


def test_fused_linear_runs_hooked_or_wrapped_layers_as_they_are():
    layer = torch.nn.Linear(16, 32).to(torch.bfloat16)
    calls = []
    layer.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(fast._linear(layer, x), layer(x)) and len(calls) == 2

        class Wrapped(torch.nn.Module):  # a LoRA-style wrapper: no .weight of its own
            def __init__(self):
                super().__init__()
                self.inner = torch.nn.Linear(16, 32).to(torch.bfloat16)

            def forward(self, v):
                return self.inner(v) * 2

        wrapped = Wrapped()
        assert torch.equal(fast._linear(wrapped, x), wrapped(x))


def test_install_and_uninstall_touch_only_their_own_patches(relpos_sam):
    import types

    model, _ = load_sam(relpos_sam)
    fast.prepare_for_autocast(model, torch.bfloat16)
    fast.install(model)  # again: the fp32 patch embedding stays
    assert model.image_encoder.patch_embed.forward.__func__ is fast._fp32_forward
    own = types.MethodType(lambda self, v: v, model.image_encoder.neck)
    model.image_encoder.neck.forward = own  # someone else's
    fast.uninstall(model)
    assert "forward" not in vars(model.image_encoder) and "forward" not in vars(model.image_encoder.patch_embed)
    assert model.image_encoder.neck.forward is own


@pytest.mark.parametrize("gelu", [False, True])
def test_fused_linear_is_the_layer_and_its_gelu(gelu):
    layer = torch.nn.Linear(96, 160)
    act = torch.nn.GELU()
    x = torch.randn(3, 5, 96)
    with torch.no_grad():
        exact = layer(x) if not gelu else act(layer(x))
        assert torch.equal(fast._linear(layer, x, act if gelu else None), exact)  # fp32: the layer itself
        layer.to(torch.bfloat16)
        ours = fast._linear(layer, x.bfloat16(), act if gelu else None)
        library = layer(x.bfloat16()) if not gelu else act(layer(x.bfloat16()))
    assert ours.shape == exact.shape and ours.dtype == torch.bfloat16
    assert float((ours.float() - exact).abs().max()) <= float((library.float() - exact).abs().max()) * 1.01 + 1e-6


# -- batching -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_encoder_reproduces_single_images(relpos_sam, grays, precision, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    backend = SamBackend(runtime=RuntimeOptions(weights=str(relpos_sam), device="cpu", precision=precision,
                                                batch_size=3))
    calls = []
    backend.model.image_encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    crops = [grays[0][:300, :420], grays[1], grays[2][100:, :]]  # three sizes, one padded batch
    batched = backend.predict_batch(crops)
    assert calls == [3]
    single = [backend.predict(c) for c in crops]
    for b, s in zip(batched, single):
        assert b.score.shape == s.score.shape
        assert float(np.abs(b.score - s.score).max()) < 1e-4 and np.array_equal(b.mask, s.mask)


def test_segment_bf16_mask_agrees_with_fp32(cli, relpos_sam, image8, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    masks = {}
    for precision in ("fp32", "bf16"):
        run = cli("segment", image8, "-m", "sam", "-w", relpos_sam, "--device", "cpu",
                  "--precision", precision, "--out", tmp_path / precision)
        assert run.code == 0, run.stderr
        [record] = run.records
        assert record["params"]["precision"] == record["params"]["precision_requested"] == precision
        masks[precision] = tifffile.imread(record["mask"]) > 0
    assert 0.1 < masks["fp32"].mean() < 0.9
    assert _iou(masks["bf16"], masks["fp32"]) >= 0.99


# -- --precision auto, the default ----------------------------------------------------------------


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_the_default_and_bf16_only_on_a_cpu_with_native_bf16(cli, tiny_sam, image8, tmp_path,
                                                                     monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    records = []
    for name, extra in (("given", ("--precision", "auto")), ("default", ())):
        run = cli("segment", image8, "-m", "sam", "-w", tiny_sam, "--device", "cpu", *extra,
                  "--out", tmp_path / name)
        assert run.code == 0, run.stderr
        records.append(run.records[0])
    for record in records:
        assert record["params"]["precision"] == expected
        assert record["params"]["precision_requested"] == "auto"
    assert records[0]["confluence"] == records[1]["confluence"]


@pytest.mark.parametrize("native", [True, False])
def test_backend_records_the_resolved_and_the_requested_precision(tiny_sam, monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    backend = SamBackend(runtime=RuntimeOptions(weights=str(tiny_sam), device="cpu"))  # the default: auto
    params = backend.describe()["params"]
    assert (params["precision"], params["precision_requested"]) == ("bf16" if native else "fp32", "auto")
    assert backend.autocast_dtype is (torch.bfloat16 if native else None)
    qkv = backend.model.image_encoder.blocks[0].attn.qkv.weight
    assert qkv.dtype == (torch.bfloat16 if native else torch.float32)  # stored cast only for bf16


@pytest.mark.parametrize("flags, native", [
    ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True), ({"avx2", "avx512f"}, False),
    (set(), False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    assert devices.cpu_has_native_bf16() is native


def test_explicit_precisions_are_respected(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.resolve_precision("fp32", CPU) == "fp32"
    assert devices.check_precision("fp32", CPU) is None
    assert devices.check_precision("bf16", CPU) is torch.bfloat16
    assert devices.check_precision("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.check_precision("auto", CPU) is None
    assert devices.resolve_precision("auto", torch.device("mps")) == "fp32"


def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch):
    cuda = torch.device("cuda")
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert devices.resolve_precision("auto", cuda) == expected


def test_explicit_bf16_on_a_cpu_without_it_still_runs_emulated(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.check_precision("bf16", CPU) is torch.bfloat16  # asked for: slower, not refused


def test_unknown_precision_names_the_choices():
    with pytest.raises(UsageError, match="auto, fp32, bf16"):
        devices.check_precision("fp16", CPU)


def test_the_default_is_auto_everywhere():
    from monolayer.backends._spec import RUNTIME_OPTIONS

    [option] = [o for o in RUNTIME_OPTIONS if o.name == "precision"]
    assert option.default == RuntimeOptions().precision == "auto"
