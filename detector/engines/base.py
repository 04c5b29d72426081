"""The one calling convention every engine follows, and the import guard for optional runtimes.

An engine is called with a list of RGB float tensors ``(3, H, W)`` in 0..1
(what ``Detector.preprocess`` makes) and returns one ``{"boxes", "scores",
"labels"}`` dict per image: boxes xyxy float32 in input pixels, scores float32,
labels int64. ``Detector`` holds any engine and never asks which one it is.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol, runtime_checkable

import torch

from ..config import ENGINES
from ..errors import EngineError
from ..models.build import clip

__all__ = ["ENGINES", "EXTRAS", "LOW_PRECISION_MODULES", "Engine", "first_line", "graph_scopes", "require"]
EXTRAS = {"openvino": "openvino", "onnxruntime": "onnx", "onnx": "onnx", "nncf": "nncf"}
"""Python module -> the pip extra of this package that installs it."""
LOW_PRECISION_MODULES = (
    "backbone",  # ResNet-50 + FPN
    "rpn.head.conv",  # the RPN's 3x3 tower; its 1x1 predictors stay fp32
    "roi_heads.box_roi_pool",  # feeds the box head, which rounds it to bf16 at once (torch's roi_align: fp32)
    "roi_heads.box_head",  # the two-layer box head; box_predictor stays fp32
    "head.classification_head.conv",  # RetinaNet's towers; cls_logits / bbox_reg stay fp32
    "head.regression_head.conv",
)
"""The parts of a torchvision Faster R-CNN / RetinaNet that may run in bf16/fp16 (module paths).

Everything else -- the input transform, the final class/box predictors, box decoding, clipping,
scores and NMS -- stays fp32, so scores keep fp32 resolution and boxes do not land on a bf16 grid.
The torch engine applies it per module; OpenVINO per graph node, by the scopes the ONNX export
names after these modules."""


def graph_scopes(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Node-name prefixes of these module paths in a graph made by ``detector export`` (``SingleImage``
    holds the detector as ``model``; the ONNX exporter names nodes by module scope)."""
    return tuple("/model/" + path.replace(".", "/") + "/" for path in paths)


def first_line(exc: BaseException) -> str:
    """A runtime's error as one short line for ours (its text can run to pages), cut at a word boundary."""
    text = str(exc).strip()
    return clip(text.splitlines()[0] if text else type(exc).__name__)


@runtime_checkable
class Engine(Protocol):
    """RGB CHW float frames in, per-image boxes/scores/labels out."""

    kind: str
    """``torch``, ``openvino`` or ``onnxruntime``."""
    precision: str
    """The precision it actually runs at (``fp32`` or ``bf16``)."""

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]: ...


def require(module: str) -> ModuleType:
    """Import an optional runtime, or fail with one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise EngineError(
            f"{module} is not installed; install it with: pip install 'detector-rt[{extra}]' (or pip install {module})"
        ) from None
