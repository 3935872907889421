"""A faster, numerically faithful SAM image encoder: fused attention, and in bf16 fused blocks.

segment-anything's ``Attention.forward`` builds the whole (tokens x tokens) score
matrix per head, adds the decomposed relative-position bias, soft-maxes it and
multiplies by V: four passes over 4096 x 4096 per head in each global block of a
1024 x 1024 image, each pass a freshly allocated 400 MB (bf16) array. Here the bias
is passed as ``attn_mask`` to ``torch.nn.functional.scaled_dot_product_attention``
(segment-anything-fast's approach), whose fused kernel does the scale, bias,
softmax and product in one pass, over blocks of query rows: the bias of one block
is written into one reused buffer, so it never exists for the whole grid at once.
Q, K and V are strided views of the ``qkv`` projection (no copies) and the output
is written in the token-major layout ``proj`` reads.

Same parameters, same maths: the state dict is untouched and the library is never
edited; each ``Attention`` instance gets this forward bound to it. In fp32 the
output equals the library's within float rounding (about 1e-6). In bf16 the two
round at different points (the library rounds the raw scores, each bias addition
and the probabilities to bf16; the fused kernel keeps them in fp32), so they
differ by bf16's own resolution, each about as far from the fp32 result as the
other (``tests/test_sam_speed.py``; ``benchmarks/sam_speed.py``). Matching the
library's bf16 bit for bit is possible only by repeating its four passes (blocked
over query rows, that reproduces it exactly), which costs the speed this gains.
"""

from __future__ import annotations

import functools
import math
import threading
import types
from typing import Any

import torch
import torch.nn.functional as F

# Query tokens per SDPA call in a global block: the bias block is heads x 1024 x tokens
# (96 MiB for ViT-B in bf16), written into one buffer reused by every block and call.
QUERY_BLOCK = 1024
_SCRATCH = threading.local()


def _bias_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch array of ``shape`` in ``like``'s dtype and device, one per thread, reused
    from call to call: a fresh 96 MiB array costs more in page faults than the bias add
    that fills it. Kept while its dtype, device and inference mode still fit."""
    numel = math.prod(shape)
    buffer = getattr(_SCRATCH, "bias", None)
    if (buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device
            or buffer.is_inference() != torch.is_inference_mode_enabled()):
        buffer = _SCRATCH.bias = None  # let the old one go before the new one is allocated
        buffer = _SCRATCH.bias = like.new_empty(numel)
    return buffer[:numel].view(shape)


def _rel_pos_terms(q: torch.Tensor, module: Any, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's decomposed relative-position terms for queries ``q`` (..., H*W, C):
    ``rel_h`` (..., H, W, H) and ``rel_w`` (..., H, W, W), as ``add_decomposed_rel_pos``
    computes them, contiguous and in ``q``'s dtype (the dtype SDPA wants for its mask)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    h, w = size
    rh = get_rel_pos(h, h, module.rel_pos_h)
    rw = get_rel_pos(w, w, module.rel_pos_w)
    r_q = q.reshape(*q.shape[:-2], h, w, q.shape[-1])
    rel_h = torch.einsum("...hwc,hkc->...hwk", r_q, rh)
    rel_w = torch.einsum("...hwc,wkc->...hwk", r_q, rw)
    return rel_h.to(q.dtype).contiguous(), rel_w.to(q.dtype).contiguous()


def _small_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """``rel_h[..., None] + rel_w[..., None, :]`` for a small grid, as one matrix product.

    The broadcast add runs 14-element inner loops on a 14 x 14 window; the product of
    ``[rel_h, rel_w]`` with the 0/1 matrix that picks (row, column) computes every sum
    as ``1 * a + 1 * b`` in fp32 and rounds it once: the same numbers, bit for bit,
    several times faster.
    """
    h, w = rel_h.shape[-1], rel_w.shape[-1]
    if h + w > 64:  # the product's cost grows with h + w; the add's inner loop does too
        return torch.add(rel_h[..., None], rel_w[..., None, :])
    picks = torch.zeros(h + w, h, w, dtype=rel_h.dtype, device=rel_h.device)
    idx = torch.arange(max(h, w), device=rel_h.device)
    picks[idx[:h], idx[:h], :] = 1
    picks[h + idx[:w], :, idx[:w]] = 1
    return torch.matmul(torch.cat([rel_h, rel_w], -1), picks.view(h + w, h * w))


def attention_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` with the relative-position bias fed to fused SDPA."""
    b, h, w, _ = x.shape
    n = h * w
    heads = self.num_heads
    qkv = _linear(self.qkv, x).view(b, n, 3, heads, -1)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (b, heads, n, c) views
    if not self.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    else:
        rel_h, rel_w = _rel_pos_terms(q, self, (h, w))
        rows = max(1, QUERY_BLOCK // w)  # whole rows of the token grid per block
        if rows >= h:  # a window (or a small grid): one call
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_small_bias(rel_h, rel_w).view(b, heads, n, n),
                                                 scale=self.scale)
        else:
            # SDPA's own output layout, (b, n, heads, c) in memory: the reshape for proj is free.
            out = q.new_empty(b, n, heads, q.shape[-1]).transpose(1, 2)
            differentiable = torch.is_grad_enabled() and q.requires_grad  # out= has no gradient
            buffer = None if differentiable else _bias_buffer((b, heads, rows, w, h, w), q)
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                if buffer is None:
                    bias = rel_h[:, :, r0:r1, :, :, None] + rel_w[:, :, r0:r1, :, None, :]
                else:
                    bias = buffer[:, :, : r1 - r0]
                    torch.add(rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :], out=bias)
                out[:, :, r0 * w: r1 * w] = F.scaled_dot_product_attention(
                    q[:, :, r0 * w: r1 * w], k, v, attn_mask=bias.view(b, heads, (r1 - r0) * w, n),
                    scale=self.scale)
    return _linear(self.proj, out.transpose(1, 2).reshape(b, h, w, -1))


def install(model: Any) -> int:
    """Bind :func:`attention_forward` to every image-encoder ``Attention`` of ``model``, and
    make the patch embedding's output contiguous; returns how many attentions were patched.
    Idempotent.

    segment-anything's ``PatchEmbed`` returns its convolution's output permuted to
    (B, H, W, C) as a strided view, and every later residual sum keeps that layout: each
    block's LayerNorms and additions then read the token stream with a stride of 4096
    tokens. One copy makes it token-major, as the linear layers read it (a bf16 ViT-B image
    on 2 CPU cores, alternating with and without: 3.64 s -> 3.28 s). The copy's values are
    the same; the sums after it may round in another order (about 1e-6 in fp32).
    """
    from segment_anything.modeling.image_encoder import Attention

    encoder = model.image_encoder
    if "forward" not in vars(encoder.patch_embed):  # prepare_for_autocast's fp32 one stays
        encoder.patch_embed.forward = types.MethodType(_contiguous_forward, encoder.patch_embed)
    patched = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(attention_forward, module)
            patched += 1
    return patched


def prepare_for_autocast(model: Any, dtype: torch.dtype) -> int:
    """Ready the image encoder to run under autocast to ``dtype`` (bf16): faster, and closer
    to fp32 than plain autocast. Returns how many layers were stored in ``dtype``.

    * The transformer blocks' ``Linear`` weights and biases are stored in ``dtype``:
      autocast casts exactly these to ``dtype`` on every call (a fresh copy of 85 M
      parameters per image); stored already cast, the same numbers go in without the copy.
    * Each block runs :func:`block_forward`: the library's arithmetic, with the residual
      sums in place and, on a CPU, the linear layers' bias and GELU done in the matrix
      product's epilogue (oneDNN) instead of two more passes over the activations.
    * The patch embedding and the neck run in fp32 (1 % of the FLOPs): under plain
      autocast the image is rounded to 8 significant bits before the first convolution,
      and the neck's ``LayerNorm2d`` (plain tensor ops, which autocast leaves alone)
      takes its means and variances in bf16 arithmetic; these two are a third of
      bf16's error on the prob map (measured on the example images).

    The encoder then runs only under autocast to ``dtype``.
    """
    from segment_anything.modeling.image_encoder import Block

    encoder = model.image_encoder
    for module in (encoder.patch_embed, encoder.neck):
        module.forward = types.MethodType(_fp32_forward, module)
    encoder.forward = types.MethodType(encoder_forward, encoder)
    converted = 0
    for module in encoder.blocks.modules():
        if isinstance(module, Block):
            module.forward = types.MethodType(block_forward, module)
        elif isinstance(module, torch.nn.Linear):
            module.to(dtype)
            converted += 1
    return converted


def _contiguous_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The module's own forward, its output made contiguous (see :func:`install`)."""
    return type(self).forward(self, x).contiguous()


def _fp32_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The module's own forward in fp32, autocast off, its output contiguous."""
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float()).contiguous()


@functools.lru_cache(maxsize=None)
def _onednn_bf16() -> bool:
    """Whether oneDNN computes bf16 matmuls on this CPU (AVX-512 or AMX); the fused op
    has no fallback where it does not (inductor asks the same before emitting it)."""
    try:
        return (hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
                and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def _fused_linear_available() -> bool:
    return bool(torch.backends.mkldnn.enabled) and _onednn_bf16()


def _plain(module: Any, kind: type) -> bool:
    """``module`` is exactly ``kind`` with no hooks: computing its maths directly skips nothing."""
    return type(module) is kind and not (module._forward_hooks or module._forward_pre_hooks)


def _no_global_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return not (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def _linear(layer: Any, x: torch.Tensor, act: Any = None) -> torch.Tensor:
    """``layer(x)``, then ``act`` if given.

    On a CPU where oneDNN computes bf16, with ``x`` and the weights in bf16, for a plain
    ``nn.Linear`` and an exact ``nn.GELU`` (no hooks, no wrappers), one oneDNN matmul does
    it all, the bias and the GELU applied to the fp32 accumulator before the single rounding
    to bf16 (the library rounds the product to bf16, then GELU's output again). Anywhere
    else, and whenever a gradient is wanted, the modules themselves run.
    """
    if (_plain(layer, torch.nn.Linear) and (act is None or (_plain(act, torch.nn.GELU) and act.approximate == "none"))
            and x.device.type == "cpu" and x.dtype == layer.weight.dtype == torch.bfloat16
            and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
            and _no_global_hooks() and _fused_linear_available()):
        shape = x.shape
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), layer.weight, layer.bias,
                                                 "none" if act is None else "gelu", [],
                                                 "" if act is None else "none")
        return out.view(*shape[:-1], out.shape[-1])
    out = layer(x)
    return out if act is None else act(out)


_STREAM = threading.local()


def encoder_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``ImageEncoderViT.forward``, marking the token stream as this call's own: the sum
    with the position embedding is a new tensor nobody else holds, so the blocks may add
    their residuals into it in place (:func:`block_forward`)."""
    x = self.patch_embed(x)
    owned = self.pos_embed is not None
    if owned:
        x = x + self.pos_embed
    _STREAM.owned, before = owned, getattr(_STREAM, "owned", False)
    try:
        for blk in self.blocks:
            x = blk(x)
    finally:
        _STREAM.owned = before
    return self.neck(x.permute(0, 3, 1, 2))


def block_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Block.forward`` for inference under autocast, same arithmetic.

    The LayerNorms' fp32 outputs are cast to the weights' dtype where autocast would cast
    them (before ``qkv`` and ``lin1``; the window partition moves half the bytes after the
    cast). The residual sums go in place into the token stream only inside
    :func:`encoder_forward`'s loop and when no hook could be holding a block's input or
    output; a block called any other way leaves its argument alone. With gradients on,
    the library's own forward runs.
    """
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    dtype = self.mlp.lin1.weight.dtype
    if torch.is_grad_enabled() or not torch.is_autocast_enabled(x.device.type):
        return type(self).forward(self, x)
    y = self.norm1(x).to(dtype)
    if self.window_size > 0:
        hw = (y.shape[1], y.shape[2])
        y, pad_hw = window_partition(y, self.window_size)
    y = self.attn(y)
    if self.window_size > 0:
        y = window_unpartition(y, self.window_size, pad_hw, hw)
    in_place = (getattr(_STREAM, "owned", False) and not (self._forward_hooks or self._forward_pre_hooks)
                and _no_global_hooks())
    x = x.add_(y) if in_place else x + y
    x.add_(_linear(self.mlp.lin2, _linear(self.mlp.lin1, self.norm2(x).to(dtype), self.mlp.act)))
    return x


_OURS = {"attention_forward", "block_forward", "encoder_forward", "_contiguous_forward", "_fp32_forward"}


def uninstall(model: Any) -> None:
    """Give every image-encoder module this module patched back the library's own forward
    (the reference; weights that :func:`prepare_for_autocast` stored in bf16 stay bf16)."""
    for module in model.image_encoder.modules():
        forward = vars(module).get("forward")
        if getattr(getattr(forward, "__func__", None), "__name__", None) in _OURS:
            del module.forward
