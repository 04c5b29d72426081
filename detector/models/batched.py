"""A batched, sync-free inference path for torchvision's Faster R-CNN (v1 and v2); RetinaNet's is in
:mod:`detector.models.batched_retinanet`, and :func:`batched_path` picks the one a model needs.

Why: torchvision's detection code waits for the GPU many times inside every forward (per-image Python loops
with ``torch.where``, boolean masks and ``nms``, small host-built tensors), so the GPU idles while the host
catches up. :class:`BatchedFasterRCNN` runs the same modules (and weights) of a built torchvision
``FasterRCNN`` on padded, fixed-size tensors with validity masks, and copies the results to the host once.

Equality with ``model(images)`` is the contract: every step mirrors torchvision's arithmetic (same ops on the
same shapes where rounding could differ). Where a fixed size could change a result (an NMS iteration that has
not reached its fixed point, fewer than ``detections_per_img`` boxes kept among the ``roi_topk`` best
candidates while more candidates exist), the device raises a per-image flag that travels with the results;
a flagged batch has its heads rerun with torchvision's own code on the same features, so a result never
silently differs.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["BatchedDetector", "BatchedFasterRCNN", "SyncCounter", "batched_greedy_nms", "batched_path"]

# Packed per-detection columns: x1, y1, x2, y2, score, label.
_COLUMNS = 6


def batched_greedy_nms(
    boxes: Tensor, valid: Tensor, iou_threshold: float, iterations: int, classes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Greedy NMS of B independent sets at once, without host syncs; boxes are in descending score order.

    ``boxes`` (B, N, 4), ``valid`` (B, N) bool, optional ``classes`` (B, N) (boxes of different classes never
    suppress each other). Box i is kept iff valid and no kept box j < i overlaps it with IoU > threshold:
    a triangular system with one solution. Jacobi iteration from "all valid" reaches it after at most the
    longest suppression chain; ``iterations`` bounds the work, and one extra step checks the fixed point.
    Returns ``keep`` (B, N) bool and ``converged`` (B,) bool: an image that has not converged must not be
    trusted (its caller falls back to torchvision). The IoU is computed as torchvision's CPU kernel does
    (``inter / (area_i + area_j - inter)``), so decisions match it bit for bit.
    """
    n = boxes.shape[1]
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp(min=0)
    inter = w * h
    del w, h
    iou = inter / (areas[:, :, None] + areas[:, None, :] - inter)
    del inter
    # suppresses[b, j, i]: a kept j (higher score) removes i.
    suppresses = (iou > iou_threshold) & valid[:, :, None] & valid[:, None, :]
    del iou
    suppresses &= torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(1)
    if classes is not None:
        suppresses &= classes[:, :, None] == classes[:, None, :]
    # A matrix product counts kept suppressors; fp16 on CUDA (tensor cores, counts <= 2048 exact enough
    # for "> 0"), fp32 elsewhere.
    dtype = torch.float16 if boxes.device.type == "cuda" else torch.float32
    s = suppresses.to(dtype)
    del suppresses
    keep = valid
    previous = keep
    for _ in range(iterations + 1):
        previous = keep
        hit = torch.bmm(keep.to(dtype)[:, None, :], s)[:, 0, :] > 0
        keep = valid & ~hit
    converged = (keep == previous).all(dim=1)
    return keep, converged


def nms_like_torchvision(
    boxes: Tensor,
    valid: Tensor,
    labels: Tensor | int,
    count: Tensor,
    max_coordinate: Tensor,
    iou_threshold: float,
    iterations: int,
) -> tuple[Tensor, Tensor]:
    """``torchvision.ops.batched_nms`` per image, on its own branch: ``keep`` (B, N), ``converged`` (B,).

    batched_nms runs NMS per class on the boxes' own coordinates above 4,000 numbers on the CPU (100,000
    elsewhere), and below that one NMS on boxes shifted by ``label * (max_coordinate + 1)``; shifted boxes
    round their IoU differently, so the same branch is taken here per image, from ``count`` (how many boxes
    torchvision passes it) and ``max_coordinate`` (their largest coordinate), both (B,) device tensors.
    ``labels``: (B, N) classes, or one int for all boxes (a block of one RPN level). Boxes are in descending
    score order (stable), as torchvision's nms kernels sort them.
    """
    limit = 4000 if boxes.device.type == "cpu" else 100_000
    shift = (count * 4 <= limit)[:, None, None]
    top = torch.where(count > 0, max_coordinate, torch.zeros_like(max_coordinate)).to(boxes.dtype)
    if isinstance(labels, int):
        offsets = (labels * (top + 1))[:, None, None]
        classes = None
    else:
        offsets = (labels.to(boxes.dtype) * (top[:, None] + 1))[..., None]
        classes = labels
    return batched_greedy_nms(torch.where(shift, boxes + offsets, boxes), valid, iou_threshold, iterations, classes)


def max_coordinate(boxes: Tensor, valid: Tensor) -> Tensor:
    """``boxes.max()`` over each image's valid boxes (B,); -inf for an image without any."""
    return torch.where(valid[..., None], boxes, torch.full_like(boxes, -math.inf)).amax(dim=(1, 2))


def best_after_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    valid: Tensor,
    topk: int,
    nms_thresh: float,
    detections: int,
    iterations: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The final step of both heads: the ``topk`` best valid candidates of each image (B, N) in the order
    torchvision's NMS visits them (a stable sort by score: equal scores keep the lower candidate index
    first, which decides NMS ties), class-aware NMS as torchvision runs it, and the first ``detections``
    kept. Returns boxes, scores, labels, counts and a per-image flag that is False where the result may
    differ from torchvision's (NMS not at its fixed point, or too few kept while candidates were left out)."""
    n = boxes.shape[0]
    ranked = torch.where(valid, scores, torch.full_like(scores, -math.inf))
    _, order = torch.sort(ranked, dim=1, descending=True, stable=True)
    k = min(topk, order.shape[1])
    order = order[:, :k]
    cand_boxes = boxes.gather(1, order[..., None].expand(n, k, 4))
    cand_scores = scores.gather(1, order)
    cand_labels = labels.gather(1, order)
    cand_valid = valid.gather(1, order)
    count = valid.sum(dim=1)
    keep, converged = nms_like_torchvision(
        cand_boxes, cand_valid, cand_labels, count, max_coordinate(boxes, valid), nms_thresh, iterations
    )
    out_boxes, out_scores, out_labels, counts = first_kept(keep, cand_boxes, cand_scores, cand_labels, detections)
    complete = (keep.sum(dim=1) >= detections) | (count <= k)
    return out_boxes, out_scores, out_labels, counts, converged & complete


def first_kept(
    keep: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, detections: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first ``detections`` kept candidates of each image, in candidate order, padded: boxes, scores,
    labels and the count of real rows (B,). A kept candidate's slot is its rank among the kept."""
    n, k = keep.shape
    kept = keep.sum(dim=1)
    rank = keep.long().cumsum(dim=1) - 1
    slot = torch.where(keep & (rank < detections), rank, torch.full_like(rank, detections))
    positions = torch.arange(k, device=keep.device).expand(n, k)
    picked = torch.zeros(n, detections + 1, dtype=torch.long, device=keep.device).scatter_(1, slot, positions)
    picked = picked[:, : min(detections, k)]
    out_boxes = boxes.gather(1, picked[..., None].expand(-1, -1, 4))
    return out_boxes, scores.gather(1, picked), labels.gather(1, picked), kept.clamp(max=min(detections, k))


@dataclass
class _Batch:
    """Device-side state of one batch, kept until its results are read (the fallback needs it)."""

    packed: Tensor
    features: dict[str, Tensor]
    padded: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    detections: int
    heads: Any = None
    """What a fallback needs besides the features (RetinaNet: its head outputs and anchors)."""


def _mark_step_begin() -> None:
    """torch.compiler's "a new step begins" for CUDA graph trees (``cudagraph_mark_step_begin``; named
    ``mark_step_begin`` before), where this torch has it."""
    compiler = torch.compiler
    mark = getattr(compiler, "cudagraph_mark_step_begin", None) or getattr(compiler, "mark_step_begin", None)
    if mark is not None:
        mark()


class BatchedDetector:
    """What the batched paths share: device preprocessing, cached anchors, one packed result tensor per
    batch (one host copy), and per-image fallback flags answered with torchvision's own code."""

    def __init__(self, model: Any, *, nms_iterations: int) -> None:
        if model.transform.fixed_size is not None:
            raise ValueError(f"{type(self).__name__} needs the default resize (fixed_size is None)")
        self.model = model
        self.nms_iterations = nms_iterations
        self._constants: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._anchors: dict[tuple[Any, ...], Tensor] = {}
        self._device: Callable[..., tuple[Tensor, dict[str, Tensor], Any]] = self._core
        self.graphs = False
        """Whether the device part runs as captured CUDA graphs (:meth:`use_graphs`)."""
        self._seen: set[tuple[Any, ...]] = set()
        self._replaying = threading.Lock()
        self.images = 0
        """Images unpacked so far."""
        self.fallbacks = 0
        """Of those, images whose result came from torchvision's code (a fixed size was too small)."""

    # -- public -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detect on a batch; one device-to-host copy, plus torchvision's heads for a flagged batch."""
        if not images:
            return []
        # Captured graphs: one batch at a time (detect threads included), as a replay's outputs -- read by
        # the host copy and by a fallback -- live only until the next replay.
        with self._replaying if self.graphs else contextlib.nullcontext():
            batch = self.run_device(images)
            host = batch.packed.cpu()
            return self.unpack(host, batch)

    def use_graphs(self, on: bool = True) -> None:
        """Run the device part -- from the padded batch to the packed result, after the host-side resize --
        as CUDA graphs: captured whole by ``torch.compile(backend="cudagraphs", fullgraph=True,
        dynamic=False)`` (a graph break is an error, never a silent split; no code generation, so the same
        kernels and the same results as without), then replayed, one launch instead of thousands. Each new
        input shape (batch size, padded size, image sizes) captures again: made for a video or camera, whose
        frames share a size (the first batch of a shape runs uncaptured, the second captures; the last, shorter
        batch of a video runs uncaptured). Where the tensors are not on a CUDA
        device the captured graph runs as it is (no CUDA graph): what the CPU tests check. The outputs of a
        replay live until the next one: :meth:`__call__` reads them first, and runs one batch at a time
        (several detect threads take turns for the device part; without graphs they overlap)."""
        self._device = (
            torch.compile(self._core, backend="cudagraphs", fullgraph=True, dynamic=False) if on else self._core
        )
        self.graphs = on

    @torch.no_grad()
    def run_device(self, images: list[Tensor]) -> _Batch:
        """Everything up to the single host copy: no syncs (one small host-to-device copy of image sizes)."""
        padded, image_sizes, original_sizes, sizes = self._start(images)
        device = self._device
        if self.graphs:
            # A new shape runs uncaptured first: it fills the host-side caches (anchors, pooling scales) that
            # the capture would otherwise see change, and capture again for, on the next call.
            shape = (tuple(padded.shape), tuple(image_sizes))
            if shape not in self._seen:
                self._seen.add(shape)
                device = self._core
            else:
                # A new step: the previous replay's outputs, read already, may be overwritten. Said outright:
                # before torch's fix of the cudagraphs backend under inference mode (pytorch#174713, 2026-02)
                # a replay without it refused to overwrite them.
                _mark_step_begin()
        packed, features, heads = device(padded, sizes, image_sizes)
        detections = (packed.shape[1] - 2) // _COLUMNS
        return _Batch(packed, features, padded, image_sizes, original_sizes, detections, heads)

    def _core(
        self, padded: Tensor, sizes: Tensor, image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, dict[str, Tensor], Any]:
        """The device part: packed results, the features and what the fallback needs besides them."""
        raise NotImplementedError

    def unpack(self, host: Tensor, batch: _Batch) -> list[dict[str, Tensor]]:
        """Host tensors per image; a flagged image takes torchvision's own result on the same batch."""
        d = batch.detections
        per_det = host[:, : d * _COLUMNS].reshape(-1, d, _COLUMNS)
        counts = host[:, d * _COLUMNS].long().tolist()
        flagged = [i for i, f in enumerate(host[:, d * _COLUMNS + 1].tolist()) if f > 0]
        results = []
        for i, count in enumerate(counts):
            rows = per_det[i, :count]
            results.append({"boxes": rows[:, :4].clone(), "scores": rows[:, 4].clone(), "labels": rows[:, 5].long()})
        if flagged:
            exact = self._torchvision_heads(batch, flagged)
            for i in flagged:
                results[i] = {k: v.cpu() for k, v in exact[i].items()}
        self.images += len(results)
        self.fallbacks += len(flagged)
        return results

    def _torchvision_heads(self, batch: _Batch, flagged: list[int]) -> dict[int, dict[str, Tensor]]:
        """torchvision's own code from this batch's features on: its exact results, at least for ``flagged``."""
        raise NotImplementedError

    # -- shared steps -------------------------------------------------------------------------------------

    def _start(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]], Tensor]:
        """Padded batch, resized and original sizes, and the sizes as one (B, 4) device tensor
        (resized h, w, original h, w; exact in float32): the batch's one host-to-device copy."""
        if self.model.training:
            raise RuntimeError(f"{type(self).__name__} runs a model in eval mode; call model.eval() first")
        padded, image_sizes, original_sizes = self._preprocess(images)
        sizes = torch.tensor(
            [[h, w, oh, ow] for (h, w), (oh, ow) in zip(image_sizes, original_sizes, strict=True)], dtype=torch.float32
        ).to(padded.device, non_blocking=True)
        return padded, image_sizes, original_sizes, sizes

    @staticmethod
    def _pack(boxes: Tensor, scores: Tensor, labels: Tensor, counts: Tensor, flag: Tensor, sizes: Tensor) -> Tensor:
        """Boxes back to input pixels as transform.postprocess does (float32 ratio original / resized),
        then everything in one (B, D * 6 + 2) float tensor: rows, count, fallback flag (D: see
        :meth:`run_device`)."""
        n = boxes.shape[0]
        ratio_h = sizes[:, 2] / sizes[:, 0]
        ratio_w = sizes[:, 3] / sizes[:, 1]
        ratios = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h), dim=1)[:, None, :]
        boxes = boxes * ratios.to(boxes.dtype)
        per_det = torch.cat((boxes.float(), scores.float()[..., None], labels.float()[..., None]), dim=2)
        packed = torch.cat((per_det.reshape(n, -1), counts.float()[:, None], flag.float()[:, None]), dim=1)
        return packed

    def _preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """GeneralizedRCNNTransform's normalise, resize and pad, with the constants kept on the device."""
        from torchvision.models.detection.transform import _resize_image_and_masks

        transform = self.model.transform
        resized = []
        original_sizes = []
        for image in images:
            if image.dim() != 3 or not image.is_floating_point():
                raise ValueError(f"images must be CHW floating tensors, got {tuple(image.shape)} {image.dtype}")
            original_sizes.append((int(image.shape[-2]), int(image.shape[-1])))
            mean, std = self._normalisers(image.dtype, image.device)
            image = (image - mean) / std
            image, _ = _resize_image_and_masks(image, transform.min_size[-1], transform.max_size, None, None)
            resized.append(image)
        image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in resized]
        stride = float(transform.size_divisible)
        channels = max(im.shape[0] for im in resized)
        height = int(math.ceil(max(h for h, _ in image_sizes) / stride) * stride)
        width = int(math.ceil(max(w for _, w in image_sizes) / stride) * stride)
        padded = resized[0].new_full((len(resized), channels, height, width), 0)
        for i, im in enumerate(resized):
            padded[i, : im.shape[0], : im.shape[1], : im.shape[2]].copy_(im)
        return padded, image_sizes, original_sizes

    def _normalisers(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """Mean and std as (C, 1, 1) device tensors, built once per dtype and device (not once per image)."""
        key = (dtype, device)
        if key not in self._constants:
            transform = self.model.transform
            mean = torch.as_tensor(transform.image_mean, dtype=dtype, device=device)[:, None, None]
            std = torch.as_tensor(transform.image_std, dtype=dtype, device=device)[:, None, None]
            self._constants[key] = (mean, std)
        return self._constants[key]

    def _anchors_for(
        self, generator: Any, padded: Tensor, image_sizes: list[tuple[int, int]], feats: list[Tensor]
    ) -> Tensor:
        """The anchors of one image (they depend only on the padded size), cached on the device."""
        from torchvision.models.detection.image_list import ImageList

        key = (tuple(padded.shape[-2:]), tuple(tuple(f.shape[-2:]) for f in feats), feats[0].dtype, padded.device)
        if key not in self._anchors:
            self._anchors[key] = generator(ImageList(padded[:1], image_sizes[:1]), feats)[0]
        return self._anchors[key]


class BatchedFasterRCNN(BatchedDetector):
    """Run a torchvision ``FasterRCNN`` (eval mode) on a batch with one host copy instead of hundreds of syncs.

    ``BatchedFasterRCNN(model)(images)`` equals ``model(images)``: images are CHW float tensors in 0..1 on the
    model's device (sizes may differ); results are host tensors ``boxes`` (N, 4) float32, ``scores`` (N,)
    float32, ``labels`` (N,) int64 per image. The model's modules and weights are used as they are.

    ``roi_topk``: the best-scoring class candidates per image that the final NMS considers (fixed size);
    ``nms_iterations``: the bound on the fixed-point iteration. Either, too small for a batch, costs a
    fallback to torchvision's code, never a different result.
    """

    def __init__(self, model: Any, *, roi_topk: int = 1000, nms_iterations: int = 32) -> None:
        from torchvision.models.detection.faster_rcnn import FasterRCNN

        if not isinstance(model, FasterRCNN):
            raise TypeError(f"BatchedFasterRCNN takes a torchvision FasterRCNN, got {type(model).__name__}")
        heads = model.roi_heads
        if heads.has_mask() or heads.has_keypoint():
            raise TypeError("BatchedFasterRCNN covers box detection only (no mask or keypoint heads)")
        super().__init__(model, nms_iterations=nms_iterations)
        self.roi_topk = roi_topk
        self._scales: dict[tuple[Any, ...], tuple[list[float], Any]] = {}

    def _core(
        self, padded: Tensor, sizes: Tensor, image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, dict[str, Tensor], Any]:
        features = self.model.backbone(padded)
        proposals, proposal_valid, rpn_converged = self._rpn(padded, image_sizes, features, sizes)
        boxes, scores, labels, counts, roi_ok = self._roi_heads(features, proposals, proposal_valid, sizes, image_sizes)
        packed = self._pack(boxes, scores, labels, counts, ~(rpn_converged & roi_ok), sizes)
        return packed, features, None

    # -- region proposals ---------------------------------------------------------------------------------

    def _rpn(
        self, padded: Tensor, image_sizes: list[tuple[int, int]], features: dict[str, Tensor], sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """RegionProposalNetwork.forward + filter_proposals on (B, fixed) tensors: proposals, valid, converged."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn = self.model.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = self._anchors_for(rpn.anchor_generator, padded, image_sizes, feats)
        n = padded.shape[0]
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        # Same shapes as torchvision's decode (anchors repeated per image), so the same rounding.
        all_anchors = anchors[None].expand(n, -1, -1).reshape(-1, 4)
        proposals = _decode(rpn.box_coder, deltas.detach(), all_anchors).view(n, -1, 4)

        objectness = objectness.detach().reshape(n, -1)
        top_idx = []
        taken = []
        offset = 0
        for ob in objectness.split(per_level, 1):
            k = min(rpn.pre_nms_top_n(), ob.shape[1])
            _, idx = ob.topk(k, dim=1)
            top_idx.append(idx + offset)
            taken.append(k)
            offset += ob.shape[1]
        top_n_idx = torch.cat(top_idx, dim=1)
        batch_idx = torch.arange(n, device=padded.device)[:, None]
        scores = torch.sigmoid(objectness[batch_idx, top_n_idx])
        boxes = _clip(proposals[batch_idx, top_n_idx], sizes)
        valid = _not_small(boxes, rpn.min_size) & (scores >= rpn.score_thresh)

        # NMS per level (torchvision's batched_nms with the level as class: levels never suppress each other):
        # one block per level, each already in score order (topk sorts), as torchvision's stable sort leaves it;
        # shifted by level as its small-input branch does.
        count = valid.sum(dim=1)
        top = max_coordinate(boxes, valid)
        keep_parts = []
        converged = torch.ones(n, dtype=torch.bool, device=padded.device)
        start = 0
        for level, k in enumerate(taken):
            block = slice(start, start + k)
            keep, ok = nms_like_torchvision(
                boxes[:, block], valid[:, block], level, count, top, rpn.nms_thresh, self.nms_iterations
            )
            keep_parts.append(keep)
            converged &= ok
            start += k
        keep = torch.cat(keep_parts, dim=1)
        ranked = torch.where(keep, scores, torch.full_like(scores, -1.0))
        post = min(rpn.post_nms_top_n(), ranked.shape[1])
        best, order = ranked.topk(post, dim=1)
        return boxes[batch_idx, order], best >= 0, converged

    # -- box heads ----------------------------------------------------------------------------------------

    def _roi_heads(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        proposal_valid: Tensor,
        sizes: Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """RoIHeads.forward + postprocess_detections on (B, fixed) tensors."""
        heads = self.model.roi_heads
        n, p = proposals.shape[:2]
        box_features = self._roi_pool(features, proposals, image_sizes)
        box_features = heads.box_head(box_features)
        class_logits, box_regression = heads.box_predictor(box_features)
        num_classes = class_logits.shape[-1]
        pred_boxes = _decode(heads.box_coder, box_regression, proposals.reshape(-1, 4))
        pred_boxes = _clip(pred_boxes.reshape(n, p, num_classes, 4), sizes)
        pred_scores = torch.softmax(class_logits, -1).reshape(n, p, num_classes)
        # Drop the background class; candidates in torchvision's flattened order (proposal-major).
        boxes = pred_boxes[:, :, 1:].reshape(n, -1, 4)
        scores = pred_scores[:, :, 1:].reshape(n, -1)
        labels = torch.arange(1, num_classes, device=scores.device).repeat(p)
        valid = (
            proposal_valid[:, :, None].expand(n, p, num_classes - 1).reshape(n, -1)
            & (scores > heads.score_thresh)
            & _not_small(boxes, 1e-2)
        )
        return best_after_nms(boxes, scores, labels.expand(n, -1), valid, self.roi_topk, heads.nms_thresh,
                              heads.detections_per_img, self.nms_iterations)  # fmt: skip

    def _roi_pool(self, features: dict[str, Tensor], proposals: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """MultiScaleRoIAlign without torch.where(levels == l): every level pools every box, a mask picks.

        RoIAlign of one box is independent of the others, so the picked values are exactly torchvision's.
        """
        from torchvision.ops import roi_align
        from torchvision.ops.poolers import _filter_input, _setup_scales

        pool = self.model.roi_heads.box_roi_pool
        x = _filter_input(features, pool.featmap_names)
        n, p = proposals.shape[:2]
        boxes = proposals.reshape(-1, 4)
        ids = torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None].expand(n, p).reshape(-1)
        rois = torch.cat((ids[:, None], boxes), dim=1)
        scales, mapper = pool.scales, pool.map_levels
        if scales is None or mapper is None:
            # torchvision infers them from the batch (host arithmetic) and keeps the first; cache per shape.
            key = (max(h for h, _ in image_sizes), max(w for _, w in image_sizes), tuple(f.shape[-2:] for f in x))
            if key not in self._scales:
                self._scales[key] = _setup_scales(x, image_sizes, pool.canonical_scale, pool.canonical_level)
            scales, mapper = self._scales[key]
        if len(x) == 1:
            return roi_align(x[0], rois, pool.output_size, scales[0], pool.sampling_ratio)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        s = torch.sqrt(area)
        target = torch.floor(mapper.lvl0 + torch.log2(s / mapper.s0) + mapper.eps)
        levels = (torch.clamp(target, min=mapper.k_min, max=mapper.k_max).to(torch.int64) - mapper.k_min)[
            :, None, None, None
        ]
        result = None
        for level, (feature, scale) in enumerate(zip(x, scales, strict=True)):
            pooled = roi_align(feature, rois, pool.output_size, scale, pool.sampling_ratio)
            result = pooled if result is None else torch.where(levels == level, pooled, result)
        assert result is not None
        return result

    # -- fallback -----------------------------------------------------------------------------------------

    def _torchvision_heads(self, batch: _Batch, flagged: list[int]) -> dict[int, dict[str, Tensor]]:
        """torchvision's own RPN, RoI heads and postprocess on this batch's features: its exact results.

        The whole batch, not only the flagged images: the box head's matrix products round by batch size."""
        from torchvision.models.detection.image_list import ImageList

        model = self.model
        image_list = ImageList(batch.padded, batch.image_sizes)
        with torch.no_grad():
            proposals, _ = model.rpn(image_list, batch.features)
            detections, _ = model.roi_heads(batch.features, proposals, batch.image_sizes)
            results = model.transform.postprocess(detections, batch.image_sizes, batch.original_sizes)
        return dict(enumerate(results))


def _decode(coder: Any, rel_codes: Tensor, boxes: Tensor) -> Tensor:
    """BoxCoder.decode_single without its host-built 0.5 tensor (x * 0.5 is exact either way)."""
    boxes = boxes.to(rel_codes.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = coder.weights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = rel_codes[:, 2::4] / ww
    dh = rel_codes[:, 3::4] / wh
    dw = torch.clamp(dw, max=coder.bbox_xform_clip)
    dh = torch.clamp(dh, max=coder.bbox_xform_clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    c_to_c_h = 0.5 * pred_h
    c_to_c_w = 0.5 * pred_w
    pred = torch.stack(
        (pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h, pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h), dim=2
    )
    return pred.flatten(1)


def _clip(boxes: Tensor, sizes: Tensor) -> Tensor:
    """clip_boxes_to_image for a batch: boxes (B, ..., 4), bounds from the device sizes (resized h, w)."""
    shape = (boxes.shape[0],) + (1,) * (boxes.dim() - 2) + (4,)
    h, w = sizes[:, 0], sizes[:, 1]
    upper = torch.stack((w, h, w, h), dim=1).to(boxes.dtype).reshape(shape)
    return torch.minimum(boxes.clamp(min=0), upper)


def _not_small(boxes: Tensor, min_size: float) -> Tensor:
    """remove_small_boxes as a mask."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def batched_path(model: Any, **options: Any) -> BatchedDetector | None:
    """The batched wrapper for a torchvision detector: :class:`BatchedFasterRCNN` for a box-only
    ``FasterRCNN`` (v1, v2), :class:`~detector.models.batched_retinanet.BatchedRetinaNet` for a ``RetinaNet``
    (v1, v2), each with the default resize; None for anything else (TorchScript, Mask R-CNN, SSD...).
    ``options`` go to the wrapper (``nms_iterations``...)."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.retinanet import RetinaNet

    if getattr(getattr(model, "transform", None), "fixed_size", 0) is not None:
        return None
    if isinstance(model, FasterRCNN):
        heads = model.roi_heads
        return None if heads.has_mask() or heads.has_keypoint() else BatchedFasterRCNN(model, **options)
    if isinstance(model, RetinaNet):
        from .batched_retinanet import BatchedRetinaNet

        return BatchedRetinaNet(model, **options)
    return None


class SyncCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for the GPU (or copy host data to it), by name.

    Why: "sync-free" is a claim to check, on any machine: run a forward under this mode on CUDA tensors,
    on fake CUDA tensors (``FakeTensorMode``, no GPU needed) or on CPU tensors. Counted: ``nonzero``
    (``torch.where(cond)``), boolean-mask indexing and ``masked_select`` (their size is data), ``.item()``
    and ``bool(tensor)`` (``_local_scalar_dense``, ``is_nonzero``), ``equal``, ``unique``,
    ``repeat_interleave`` without ``output_size``, ``torchvision::nms`` (its CUDA kernel reads its mask on
    the host), copies between the host and a device (either way), and tensors built from host data on a
    device (``torch.tensor(..., device="cuda")``).
    """

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type
        self.events: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All counted events."""
        return sum(self.events.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = self._event(func, args, kwargs, out)
        if name:
            self.events[name] += 1
        return out

    def _event(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> str | None:
        """The event's name, or None; data-dependent ops count only on tensors of ``device_type``."""
        qualified = str(func.overloadpacket)
        name = qualified.split(".")[-1]
        first = args[0] if args and isinstance(args[0], Tensor) else None
        on_device = first is not None and first.device.type == self.device_type
        if qualified == "torchvision.nms":
            return "torchvision::nms" if on_device else None
        waits = ("nonzero", "_local_scalar_dense", "is_nonzero", "masked_select", "equal", "_unique2", "unique_dim")
        if name in waits or name == "unique_consecutive":
            return name if on_device else None
        if name == "repeat_interleave" and kwargs.get("output_size") is None and on_device:
            return "repeat_interleave"
        if name in ("index", "index_put", "index_put_", "_index_put_impl_") and on_device:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            if any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                return "boolean index"
        if name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else first
            dst = first if name == "copy_" else out
            if isinstance(src, Tensor) and isinstance(dst, Tensor):
                if src.device.type == "cpu" and dst.device.type != "cpu":
                    return "host-to-device copy"
                if src.device.type != "cpu" and dst.device.type == "cpu":
                    return "device-to-host copy"
        if name == "lift_fresh" and isinstance(out, Tensor) and out.device.type != "cpu":
            return "host-to-device copy"
        return None
