"""A batched, sync-free inference path for torchvision's RetinaNet (v1 and v2: the same post-processing).

torchvision's ``RetinaNet.postprocess_detections`` loops over images and FPN levels in Python with boolean
indexing, ``torch.where`` and ``batched_nms`` (28 syncs per image). :class:`BatchedRetinaNet` runs the same
modules on padded fixed-size tensors: per level a batched top-k of ``topk_candidates`` among the scores
above the threshold (a mask, not an index), decode, clip, then the ``nms_topk`` best candidates of each
image through a batched class-aware greedy NMS, ``detections_per_img`` kept, boxes scaled back on the
device, and one host copy per batch (see :mod:`detector.models.batched`).

Where a fixed size could change a result -- NMS not at its fixed point, or fewer than
``detections_per_img`` boxes kept among the ``nms_topk`` best while more candidates exist -- the image is
flagged on the device and redone with torchvision's own ``postprocess_detections`` on the same head outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .batched import BatchedDetector, _Batch, _clip, _decode, best_after_nms

__all__ = ["BatchedRetinaNet"]


class BatchedRetinaNet(BatchedDetector):
    """Run a torchvision ``RetinaNet`` (eval mode) on a batch with one host copy instead of hundreds of syncs.

    ``BatchedRetinaNet(model)(images)`` equals ``model(images)``: images are CHW float tensors in 0..1 on the
    model's device (sizes may differ); results are host tensors ``boxes`` (N, 4) float32, ``scores`` (N,)
    float32, ``labels`` (N,) int64 per image.

    ``nms_topk``: the best-scoring candidates per image (of up to ``topk_candidates`` per level, 5,000 with
    torchvision's defaults) that the NMS considers (fixed size: an (N, N) matrix per image);
    ``nms_iterations``: the bound on the fixed-point iteration. Either, too small for an image, costs that
    image a fallback to torchvision's code (counted in ``fallbacks``), never a different result.
    """

    def __init__(self, model: Any, *, nms_topk: int = 2000, nms_iterations: int = 32) -> None:
        from torchvision.models.detection.retinanet import RetinaNet

        if not isinstance(model, RetinaNet):
            raise TypeError(f"BatchedRetinaNet takes a torchvision RetinaNet, got {type(model).__name__}")
        super().__init__(model, nms_iterations=nms_iterations)
        self.nms_topk = nms_topk

    def _core(
        self, padded: Tensor, sizes: Tensor, image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, dict[str, Tensor], Any]:
        features = self.model.backbone(padded)
        if isinstance(features, Tensor):
            features = {"0": features}
        feats = list(features.values())
        head_outputs = self.model.head(feats)
        anchors = self._anchors_for(self.model.anchor_generator, padded, image_sizes, feats)
        boxes, scores, labels, counts, ok = self._postprocess(head_outputs, anchors, feats, sizes)
        packed = self._pack(boxes, scores, labels, counts, ~ok, sizes)
        return packed, features, (head_outputs, anchors)

    def _postprocess(
        self, head_outputs: dict[str, Tensor], anchors: Tensor, feats: list[Tensor], sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """RetinaNet.postprocess_detections on (B, fixed) tensors: boxes, scores, labels, counts, ok."""
        model = self.model
        logits = head_outputs["cls_logits"]
        regression = head_outputs["bbox_regression"]
        n, total, num_classes = logits.shape
        hw = [f.shape[-2] * f.shape[-1] for f in feats]
        per_anchor = total // sum(hw)
        level_boxes, level_scores, level_labels, level_valid = [], [], [], []
        start = 0
        for size in (x * per_anchor for x in hw):
            # Sigmoid on the level's (B, A, C) view: every image's row runs through the same element loop as
            # torchvision's per-image slice, so the same rounding.
            scores = torch.sigmoid(logits[:, start : start + size]).reshape(n, -1)
            above = scores > model.score_thresh
            k = min(model.topk_candidates, scores.shape[1])
            # torchvision takes the top k of the scores above the threshold; here of all scores with those
            # below it masked to -1 (sigmoid >= 0): the same k largest, the masked ones marked invalid.
            top, idx = torch.where(above, scores, torch.full_like(scores, -1.0)).topk(k, dim=1)
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            codes = regression[:, start : start + size].gather(1, anchor_idx[..., None].expand(-1, -1, 4))
            picked = anchors[start : start + size][anchor_idx]
            decoded = _decode(model.box_coder, codes.reshape(-1, 4), picked.reshape(-1, 4))
            level_boxes.append(_clip(decoded.reshape(n, k, 4), sizes))
            level_scores.append(top)
            level_labels.append(idx % num_classes)
            level_valid.append(above.gather(1, idx))
            start += size
        boxes = torch.cat(level_boxes, dim=1)
        scores = torch.cat(level_scores, dim=1)
        labels = torch.cat(level_labels, dim=1)
        valid = torch.cat(level_valid, dim=1)

        # The nms_topk best candidates, in the order torchvision's nms kernel visits them (a stable sort by
        # score of the candidates in level order).
        return best_after_nms(boxes, scores, labels, valid, self.nms_topk, model.nms_thresh,
                              model.detections_per_img, self.nms_iterations)  # fmt: skip

    def _torchvision_heads(self, batch: _Batch, flagged: list[int]) -> dict[int, dict[str, Tensor]]:
        """torchvision's own postprocess_detections and transform.postprocess on the flagged images' head
        outputs (it works image by image: a subset gives each image the result the whole batch would)."""
        head_outputs, anchors = batch.heads
        feats = list(batch.features.values())
        hw = [f.shape[-2] * f.shape[-1] for f in feats]
        per_anchor = head_outputs["cls_logits"].shape[1] // sum(hw)
        split = [x * per_anchor for x in hw]
        index = torch.tensor(flagged, device=anchors.device)
        outputs = {k: list(v.index_select(0, index).split(split, dim=1)) for k, v in head_outputs.items()}
        image_sizes = [batch.image_sizes[i] for i in flagged]
        original_sizes = [batch.original_sizes[i] for i in flagged]
        per_image = [list(anchors.split(split))] * len(flagged)
        with torch.no_grad():
            detections = self.model.postprocess_detections(outputs, per_image, image_sizes)
            results = self.model.transform.postprocess(detections, image_sizes, original_sizes)
        return dict(zip(flagged, results, strict=True))
