"""Model registry, builders and weights resolution (the ``Detector`` that runs them is in :mod:`detector.predictor`)."""

from .build import build_model, is_torchscript, load_torchscript
from .registry import MODELS, ModelSpec, get_spec

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "get_spec",
    "is_torchscript",
    "load_torchscript",
]
