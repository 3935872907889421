"""Mask R-CNN R50-FPN with one foreground class ("cell"), on torchvision.

The paper trained detectron2's ``mask_rcnn_R_50_FPN_3x`` config. detectron2 is
not installable here, so this backend runs torchvision's implementation of the
same architecture (ResNet-50 + FPN, RPN, box and mask heads; ``num_classes=2``:
background + cell). A detectron2 adapter is NOT provided and no compatibility
with detectron2 checkpoints is claimed: their parameter names differ
(``backbone.bottom_up.res2...``) and details differ too (detectron2 uses
ROIAlignV2), so such a file is refused with a :class:`DataError`. Checkpoints
are ``state_dict()`` files of
``torchvision.models.detection.maskrcnn_resnet50_fpn(num_classes=2)`` (the v1
model, not ``_v2``), trained from scratch or fine-tuned from torchvision's
weights; both BatchNorm and FrozenBatchNorm variants load (the backbone here
uses FrozenBatchNorm, which ignores ``num_batches_tracked``; in eval mode the
two compute the same thing).

Inference rules:

* The grayscale image is repeated into three channels and given to the model as
  is; torchvision's transform resizes it internally (shorter side 800, longer at
  most 1333, as detectron2's test defaults) and boxes and masks are mapped back
  to the original size here, so every output has the image's shape.
* At most ``DETECTIONS_PER_IMAGE`` = 500 instances are kept per image
  (torchvision's and detectron2's default of 100 truncates dense cultures).
* Instances with score >= ``score_threshold`` are kept. Each kept instance's
  soft mask (a per-pixel probability, zero outside its box) is binarised at
  ``threshold`` (absolute); the foreground is their union.
* ``Prediction.score`` is the per-pixel MAXIMUM over kept instances of each
  instance's soft mask probability (0 where no instance reaches). Hence
  ``mask == (score >= threshold)`` exactly. It is not weighted by the instance
  scores; the paper uses no probability map for this model.
* ``extras``: ``instances`` (number kept) and ``mean_confidence`` (mean score of
  the kept instances, None when none): the paper's uncertainty for Mask R-CNN;
  the image with the LOWEST mean is labelled next. Per-instance scores are not
  recorded (too long for a record line).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes

from monolayer.backends._base import Prediction, predict_by_shape
from monolayer.backends._torch import RuntimeOptions, TorchBackend
from monolayer.errors import DataError, UsageError
from monolayer.weights import load_state_dict, load_strict

DETECTIONS_PER_IMAGE = 500
"""Instances kept per image, after NMS; dense monolayers hold hundreds of cells."""

NUM_CLASSES = 2
"""Background + cell."""

_PASTE_CHUNK = 16
"""Instance masks pasted to full size at once: bounds memory to 16 x H x W floats."""


def build_model(trainable_norm: bool = False) -> MaskRCNN:
    """An untrained Mask R-CNN R50-FPN, one foreground class.

    The backbone uses FrozenBatchNorm (inference, fine-tuning) or, with
    ``trainable_norm``, ordinary BatchNorm, as torchvision does for a backbone
    trained from scratch. Same parameter names as
    ``maskrcnn_resnet50_fpn(num_classes=2)`` either way, and a checkpoint of
    either kind loads into the other.
    """
    norm = torch.nn.BatchNorm2d if trainable_norm else None
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5,
                                   **({"norm_layer": norm} if norm else {}))
    return MaskRCNN(backbone, num_classes=NUM_CLASSES, box_detections_per_img=DETECTIONS_PER_IMAGE)


def load_model(state: dict[str, Any], where: str = "checkpoint") -> MaskRCNN:
    """:func:`build_model` with the checkpoint's weights; every key must fit (strict)."""
    state = dict(state)
    if any(k.startswith("backbone.bottom_up.") for k in state):
        raise DataError(f"{where}: looks like a detectron2 checkpoint, which this backend does not read",
                        "give the state_dict() of torchvision's maskrcnn_resnet50_fpn(num_classes=2)")
    cls = state.get("roi_heads.box_predictor.cls_score.weight")
    if isinstance(cls, torch.Tensor) and cls.ndim == 2 and cls.shape[0] != NUM_CLASSES:
        raise DataError(f"{where}: Mask R-CNN with {cls.shape[0] - 1} foreground classes; "
                        "this backend expects one (num_classes=2: background + cell)")
    return load_strict(build_model(), state, where, "Mask R-CNN R50-FPN with one class",
                       "expected the state_dict() of torchvision's maskrcnn_resnet50_fpn(num_classes=2)")


def detect(model: MaskRCNN, images: list[np.ndarray], device: torch.device, threshold: float,
           score_threshold: float, autocast: Any = None) -> list[Prediction]:
    """One forward pass of an eval-mode model over images of any shapes (torchvision pads
    the batch itself): the backend's rules above, shared with training's validation."""
    tensors = [torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).to(device)
               .unsqueeze(0).expand(3, -1, -1) for im in images]
    original_sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    out = []
    with torch.inference_mode():
        with autocast or contextlib.nullcontext():
            batch, _ = model.transform(tensors)
            features = model.backbone(batch.tensors)
            proposals, _ = model.rpn(batch, features)
            detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        for det, resized, original in zip(detections, batch.image_sizes, original_sizes):
            scores = det["scores"].float()
            keep = scores >= score_threshold
            scores = scores[keep]
            boxes = resize_boxes(det["boxes"].float()[keep], resized, original)
            masks = det["masks"].float()[keep]
            prob = torch.zeros(original, dtype=torch.float32, device=device)
            for start in range(0, len(scores), _PASTE_CHUNK):
                pasted = paste_masks_in_image(masks[start:start + _PASTE_CHUNK],
                                              boxes[start:start + _PASTE_CHUNK], original)
                prob = torch.maximum(prob, pasted.amax(dim=(0, 1)))
            score_map = prob.cpu().numpy().astype(np.float32, copy=False)
            n = int(scores.numel())
            out.append(Prediction(
                mask=score_map >= np.float32(threshold), score=score_map, threshold=threshold,
                extras={"instances": n, "mean_confidence": float(scores.mean()) if n else None}))
    return out


class MaskRCNNBackend(TorchBackend):
    """Union of instance masks; score = per-pixel max of kept instances' mask probabilities."""

    name: ClassVar[str] = "maskrcnn"
    score_kind = "probability"

    def __init__(self, *, runtime: RuntimeOptions, threshold: float = 0.5,
                 score_threshold: float = 0.5) -> None:
        # A zero mask threshold would make every instance cover the whole image.
        if not 0.0 < threshold <= 1.0:
            raise UsageError(f"mask threshold {threshold} is outside (0, 1]")
        if not 0.0 <= score_threshold <= 1.0:
            raise UsageError(f"score threshold {score_threshold} is outside [0, 1]")
        super().__init__(runtime)
        self.threshold = float(threshold)
        self.score_threshold = float(score_threshold)
        model = load_model(load_state_dict(self.weights.path), str(self.weights.path))
        # torchvision drops boxes with score <= score_thresh BEFORE keeping the top
        # DETECTIONS_PER_IMAGE: filtering there (just below our threshold, so that a score
        # equal to it is kept) spends the 500 slots on instances we keep.
        below = np.nextafter(np.float32(self.score_threshold), np.float32(-np.inf))
        model.roi_heads.score_thresh = float(below)
        self.model = model.to(self.device).eval()

    def _run(self, images: list[np.ndarray]) -> list[Prediction]:
        return detect(self.model, images, self.device, self.threshold, self.score_threshold, self.autocast())

    @staticmethod
    def _check(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise DataError(f"Mask R-CNN expects one 2-D grayscale image, got shape {image.shape}")
        return image

    def predict(self, image: np.ndarray) -> Prediction:
        return self._run([self._check(image)])[0]

    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """Equal-shape images go through the model together, at most ``batch_size`` at once."""
        return predict_by_shape([self._check(im) for im in images], self.batch_size, self._run)

    def describe(self) -> dict[str, Any]:
        return self.describe_with(None, {"threshold": self.threshold,
                                         "score_threshold": self.score_threshold,
                                         "detections_per_image": DETECTIONS_PER_IMAGE})
