"""The four torchvision ResNet-50-FPN detectors, built by name with random init.

A :class:`ModelSpec` carries the builder and torchvision's COCO weights enum
(URL, file name with its sha256 prefix, categories). Building never downloads:
weights are resolved and loaded separately (:mod:`detector.models.weights`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models._api import WeightsEnum

from ..config import DetectorConfig
from ..errors import ConfigError

Family = Literal["faster_rcnn", "retinanet"]
HASH_RE = re.compile(r"-([a-f0-9]{6,})\.pth?$")
RETINANET_ANCHORS_PER_LOCATION = 9  # 3 sizes x 3 aspect ratios in both RetinaNet variants


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    builder: Callable[..., nn.Module]
    url: str
    """Where torchvision publishes the COCO weights; the file name carries a sha256 prefix."""
    box_map: float
    """torchvision's published COCO val2017 box mAP for those weights."""

    @classmethod
    def from_weights(
        cls, name: str, family: Family, builder: Callable[..., nn.Module], weights: WeightsEnum
    ) -> ModelSpec:
        return cls(name, family, builder, str(weights.url), float(weights.meta["_metrics"]["COCO-val2017"]["box_map"]))

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        match = HASH_RE.search(self.file_name)
        if match is None:
            raise ValueError(f"{self.file_name} carries no sha256 prefix")
        return match.group(1)

    def build_kwargs(self, cfg: DetectorConfig, num_classes: int) -> dict[str, Any]:
        """Keyword arguments for the torchvision builder that realise ``cfg``."""
        kwargs: dict[str, Any] = {
            "weights": None,
            "weights_backbone": None,
            "num_classes": num_classes,
            "min_size": cfg.min_size,
            "max_size": cfg.max_size,
        }
        if self.family == "faster_rcnn":
            kwargs.update(
                box_score_thresh=cfg.score_threshold,
                box_nms_thresh=cfg.nms_threshold,
                box_detections_per_img=cfg.max_detections,
                rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n,
                rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
            )
        else:
            kwargs.update(
                score_thresh=cfg.score_threshold,
                nms_thresh=cfg.nms_threshold,
                detections_per_img=cfg.max_detections,
            )
        return kwargs

    def build(self, cfg: DetectorConfig, num_classes: int = 91) -> nn.Module:
        """The model with random weights (seed it for reproducibility), in eval mode."""
        return self.builder(**self.build_kwargs(cfg, num_classes)).eval()

    def num_classes_in(self, state_dict: dict[str, torch.Tensor]) -> int | None:
        """Number of classes a state_dict was trained with, or None if it has no head."""
        if self.family == "faster_rcnn":
            weight = state_dict.get("roi_heads.box_predictor.cls_score.weight")
            return None if weight is None else int(weight.shape[0])
        weight = state_dict.get("head.classification_head.cls_logits.weight")
        return None if weight is None else int(weight.shape[0]) // RETINANET_ANCHORS_PER_LOCATION


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec.from_weights(
            "fasterrcnn_resnet50_fpn", "faster_rcnn", tvd.fasterrcnn_resnet50_fpn,
            tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
        ),
        ModelSpec.from_weights(
            "fasterrcnn_resnet50_fpn_v2", "faster_rcnn", tvd.fasterrcnn_resnet50_fpn_v2,
            tvd.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        ),
        ModelSpec.from_weights(
            "retinanet_resnet50_fpn", "retinanet", tvd.retinanet_resnet50_fpn,
            tvd.RetinaNet_ResNet50_FPN_Weights.COCO_V1,
        ),
        ModelSpec.from_weights(
            "retinanet_resnet50_fpn_v2", "retinanet", tvd.retinanet_resnet50_fpn_v2,
            tvd.RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1,
        ),
    )
}  # fmt: skip


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model '{name}'; use one of {', '.join(MODELS)}, d2go (shipped) or a TorchScript file path"
        ) from None
