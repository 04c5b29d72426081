"""Model registry, weights resolution and the ``Detector`` wrapper."""

from .build import build_model, is_torchscript, load_torchscript
from .detector import Detector, resolve_device
from .registry import MODELS, ModelSpec, get_spec

load = Detector.load
"""``detector.load(name_or_path, ...)``: see :meth:`Detector.load`."""

__all__ = [
    "MODELS",
    "Detector",
    "ModelSpec",
    "build_model",
    "get_spec",
    "is_torchscript",
    "load",
    "load_torchscript",
    "resolve_device",
]
