"""Inference engines behind one calling convention, and export to ONNX / OpenVINO.

Every engine takes a list of RGB float ``(3, H, W)`` tensors in 0..1 and
returns one ``{"boxes", "scores", "labels"}`` dict per image, so ``Detector``
holds any of them: :class:`TorchEngine` (an ``nn.Module``, honest mixed
precision), ``OpenVINOEngine`` and ``OnnxRuntimeEngine`` (exported files;
their runtimes are optional extras, imported only when used).
"""

from .base import ENGINES, Engine, require
from .torch_engine import TorchEngine, apply_mixed_precision, low_precision_parts

__all__ = ["ENGINES", "Engine", "TorchEngine", "apply_mixed_precision", "low_precision_parts", "require"]
