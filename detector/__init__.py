"""detector: real-time object detection with torchvision's ResNet-50-FPN detectors.

Public API::

    from detector import Detector, annotate, load_config
    det = Detector.from_config(load_config("faster_rcnn_r50_fpn"))
    dets = det(frame_bgr)            # Detections: boxes xyxy, scores, labels, names
    shown = annotate(frame_bgr, dets)

Names are imported lazily, so ``import detector`` (and ``detector --help``)
does not pay for importing torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MODELS": "detector.models",
    "Detector": "detector.models",
    "Detections": "detector.structures",
    "DetectorConfig": "detector.config",
    "load_config": "detector.config",
    "annotate": "detector.render",
    "open_source": "detector.io",
    "ConfigError": "detector.errors",
    "DetectorError": "detector.errors",
    "SinkError": "detector.errors",
    "SourceError": "detector.errors",
    "WeightsError": "detector.errors",
}

__all__ = [
    "MODELS",
    "ConfigError",
    "Detections",
    "Detector",
    "DetectorConfig",
    "DetectorError",
    "SinkError",
    "SourceError",
    "WeightsError",
    "annotate",
    "load_config",
    "open_source",
]

if TYPE_CHECKING:
    from .config import DetectorConfig, load_config
    from .errors import ConfigError, DetectorError, SinkError, SourceError, WeightsError
    from .io import open_source
    from .models import MODELS, Detector
    from .render import annotate
    from .structures import Detections


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detector' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
