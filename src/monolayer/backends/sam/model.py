"""Segment Anything (segment-anything 1.0) as a confluence backend, zero-shot or fine-tuned.

The input is the 8-bit grayscale image replicated to RGB, as ``SamPredictor.set_image``
takes it: an 8-bit file's own pixel values, a 16-bit or float one stretched to 8 bits
once (``monolayer.io.images.preprocess`` mode ``"sam8"``).

``promptless`` (the paper's pipeline): the image is resized so its longest side
is 1024 (ResizeLongestSide) and padded to 1024 x 1024; image encoder -> prompt
encoder with no points, boxes or masks -> mask decoder with a single mask
(multimask_output=False) -> low-resolution logits upsampled to 1024, the
padding cropped off, then resized to the original image size -> sigmoid ->
probability map -> fixed, absolute threshold (never a per-image min-max
normalisation, which would make an empty well "have cells").

``auto``: segment-anything's automatic mask generator; the foreground is the
union of the generated masks minus the background region, i.e. minus masks
whose interior is as flat as empty background (mean local texture under the
``phase`` method's threshold). Its score map is, per pixel, the highest
predicted IoU of the kept masks covering it.

The variant (vit_b, vit_l, vit_h or a custom size) is read from the
checkpoint's own tensor shapes, so any plain SAM state dict loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from monolayer.backends._base import Prediction
from monolayer.backends._torch import RuntimeOptions, TorchBackend
from monolayer.backends.sam.fast import install as install_fast_attention
from monolayer.backends.sam.fast import prepare_for_autocast
from monolayer.errors import DataError, UsageError
from monolayer.weights import load_state_dict, load_strict

MODES = ("promptless", "auto")
IMAGE_SIZE = 1024
KNOWN_VARIANTS = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}


@dataclass(frozen=True)
class SamArchitecture:
    """Image-encoder hyper-parameters read from a checkpoint."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    @property
    def variant(self) -> str:
        return KNOWN_VARIANTS.get((self.embed_dim, self.depth), f"custom-{self.embed_dim}x{self.depth}")


def infer_architecture(state: dict[str, Any]) -> SamArchitecture:
    """Read embed dim, depth, heads and global-attention blocks from a SAM state dict.

    Global-attention blocks have relative-position tables spanning the whole
    64 x 64 token grid (2*64-1 rows); windowed blocks span 14 x 14 (27 rows).
    """
    try:
        embed_dim = int(state["image_encoder.patch_embed.proj.weight"].shape[0])
        blocks = sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
        if not blocks or blocks != list(range(len(blocks))):
            raise KeyError("image_encoder.blocks")
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        grid = IMAGE_SIZE // 16
        global_blocks = tuple(i for i in blocks
                              if int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) == 2 * grid - 1)
    except (KeyError, IndexError, AttributeError) as exc:
        raise DataError(f"not a Segment Anything checkpoint (missing {exc})",
                        "expected the state dict that segment-anything's builders save") from None
    if head_dim <= 0 or embed_dim % head_dim:
        raise DataError(f"SAM checkpoint has inconsistent attention sizes ({embed_dim} / {head_dim})")
    return SamArchitecture(embed_dim, len(blocks), embed_dim // head_dim, global_blocks)


def load_sam(path: Path) -> tuple[Any, SamArchitecture]:
    """A SAM model built to the architecture read from the checkpoint, its weights loaded strictly."""
    from segment_anything.build_sam import _build_sam

    state = load_state_dict(path)
    arch = infer_architecture(state)
    model = _build_sam(encoder_embed_dim=arch.embed_dim, encoder_depth=arch.depth,
                       encoder_num_heads=arch.num_heads,
                       encoder_global_attn_indexes=list(arch.global_attn_indexes))
    load_strict(model, state, str(path), f"the SAM {arch.variant} architecture")
    install_fast_attention(model)  # fused attention: same outputs, faster and smaller on CPU and GPU
    return model, arch


def prepare(model: Any, resize: Any, image: np.ndarray,
            device: torch.device) -> tuple[torch.Tensor, tuple[int, int]]:
    """Gray in [0, 1] -> SAM's padded 1024 x 1024 input and the resized size.

    ``image`` is the 8-bit image as v / 255 (:func:`monolayer.io.images.preprocess`
    ``"sam8"``): ``round(x * 255)`` gives back every 8-bit value exactly, and from the
    gray replicated to RGB on, this is ``SamPredictor.set_image``'s own path.
    """
    rgb = to_rgb8(image)
    resized = resize.apply_image(rgb)
    tensor = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()
    return model.preprocess(tensor[None].float()), resized.shape[:2]


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Gray in [0, 1] -> the uint8 RGB image SAM takes (``round(x * 255)`` in each channel)."""
    return np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def promptless_logits(model: Any, embedding: torch.Tensor, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """The paper's promptless decoder pass for one image embedding: (H, W) logits at the
    original size (low-res logits upsampled to 1024, padding cropped, then resized).
    Differentiable in the mask decoder, so fine-tuning trains exactly what segment runs."""
    sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=None)
    low_res, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
    logits = model.postprocess_masks(low_res, input_size=tuple(input_size), original_size=tuple(original_size))
    return logits[0, 0]


def _outputs_to_float32(_module: Any, _inputs: Any, outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(o.float() for o in outputs)


class SamBackend(TorchBackend):
    """Segment Anything, loaded once; ``mode`` is ``promptless`` (default) or ``auto``."""

    name: ClassVar[str] = "sam"
    score_kind = "probability"

    def __init__(self, *, runtime: RuntimeOptions, mode: str = "promptless", threshold: float = 0.5,
                 tile: int | None = None, tile_overlap: int | None = None, points_per_side: int = 32) -> None:
        if mode not in MODES:
            raise UsageError(f"unknown SAM mode {mode!r}", f"choose one of: {', '.join(MODES)}")
        if not 0.0 < threshold < 1.0:
            raise UsageError(f"--threshold {threshold} must be between 0 and 1")
        if tile_overlap is None:
            tile_overlap = min(128, (tile or 0) // 4)
        if tile is not None and (tile < 256 or tile_overlap >= tile // 2):
            raise UsageError("--tile must be at least 256 px and more than twice the overlap")
        super().__init__(runtime)
        from segment_anything.utils.transforms import ResizeLongestSide

        model, self.arch = load_sam(self.weights.path)
        self.model = model.to(self.device).eval()
        if self.autocast_dtype is not None:
            # The automatic mask generator turns the decoder's outputs into numpy: no bfloat16 there.
            self.model.mask_decoder.register_forward_hook(_outputs_to_float32)
            # The encoder only ever runs under autocast here: block weights stored cast, its two
            # ends (patch embedding, neck) in fp32.
            prepare_for_autocast(self.model, self.autocast_dtype)
        self.resize = ResizeLongestSide(IMAGE_SIZE)
        self.mode = mode
        self.threshold = threshold
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.points_per_side = points_per_side
        if mode == "auto":
            self.score_kind = "score"

    # -- promptless -------------------------------------------------------

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        return prepare(self.model, self.resize, image, self.device)

    @torch.inference_mode()
    def _probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Promptless SAM on whole images (each resized to 1024), batched through the encoder."""
        prepared = [self._prepare(image) for image in images]
        batch = torch.cat([x for x, _ in prepared])
        with self.autocast():
            embeddings = self.model.image_encoder(batch)
        embeddings = embeddings.float()
        out = []
        for i, (image, (_, input_size)) in enumerate(zip(images, prepared)):
            logits = promptless_logits(self.model, embeddings[i: i + 1], input_size, image.shape[:2])
            out.append(torch.sigmoid(logits.float()).cpu().numpy().astype(np.float32))
        return out

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        """Promptless SAM over overlapping tiles, probabilities averaged where tiles overlap."""
        assert self.tile is not None
        h, w = image.shape
        step = self.tile - self.tile_overlap
        starts = lambda n: sorted({*range(0, max(n - self.tile, 0) + 1, step), max(n - self.tile, 0)})
        total = np.zeros((h, w), np.float64)
        weight = np.zeros((h, w), np.float64)
        for y in starts(h):
            for x in starts(w):
                crop = image[y: y + self.tile, x: x + self.tile]
                [prob] = self._probabilities([crop])
                total[y: y + crop.shape[0], x: x + crop.shape[1]] += prob
                weight[y: y + crop.shape[0], x: x + crop.shape[1]] += 1.0
        return (total / weight).astype(np.float32)

    def _needs_tiling(self, image: np.ndarray) -> bool:
        return self.tile is not None and max(image.shape) > self.tile

    # -- auto -------------------------------------------------------------

    @torch.inference_mode()
    def _auto(self, image: np.ndarray) -> Prediction:
        from segment_anything import SamAutomaticMaskGenerator

        from monolayer.backends.phase import PhaseParams, local_std, noise_sigma
        from monolayer.io.images import normalize

        rgb = to_rgb8(image)
        generator = SamAutomaticMaskGenerator(self.model, points_per_side=self.points_per_side,
                                              output_mode="binary_mask")
        with self.autocast():
            masks = generator.generate(rgb)
        params = PhaseParams()
        # The phase thresholds are fractions of the robust intensity range: measured on the
        # stretched image, whatever contrast the 8-bit image SAM saw has.
        image = normalize(image)
        texture = local_std(image, params.window_sigma)
        flat = max(params.t_abs, params.k_noise * noise_sigma(image))
        foreground = np.zeros(image.shape, bool)
        score = np.zeros(image.shape, np.float32)
        kept = 0
        for m in masks:
            region = m["segmentation"]
            if not region.any() or float(texture[region].mean()) < flat:
                continue  # background: as flat as an empty well
            kept += 1
            foreground |= region
            score[region] = np.maximum(score[region], np.float32(m["predicted_iou"]))
        return Prediction(mask=foreground, score=np.clip(score, 0, 1),
                          extras={"instances": kept, "generated_masks": len(masks)})

    # -- interface --------------------------------------------------------

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        if self.mode == "auto":
            return [self._auto(image) for image in images]
        plain = [i for i, image in enumerate(images) if not self._needs_tiling(image)]
        probs: dict[int, np.ndarray] = {}
        if plain:
            probs.update(zip(plain, self._probabilities([images[i] for i in plain])))
        for i, image in enumerate(images):
            if i not in probs:
                probs[i] = self._tiled(image)
        return [Prediction(mask=probs[i] >= self.threshold, score=probs[i], threshold=self.threshold)
                for i in range(len(images))]

    def describe(self) -> dict[str, Any]:
        params = {"mode": self.mode, "threshold": self.threshold, "variant": self.arch.variant,
                  "tile": self.tile, "tile_overlap": self.tile_overlap if self.tile else None,
                  "points_per_side": self.points_per_side if self.mode == "auto" else None}
        return self.describe_with(self.mode, params)
