"""detector: real-time object detection with torchvision's ResNet-50-FPN detectors.

Public API::

    import detector
    det = detector.load("d2go")                  # or "fasterrcnn_resnet50_fpn", a preset, a .yaml, a .pt
    dets = det(frame_bgr)                        # Detections: boxes xyxy, scores, labels, names
    shown = detector.annotate(frame_bgr, dets)
    with detector.stream(det, "clip.mp4", max_frames=50) as results:
        for frame, dets in results: ...

Names are imported lazily, so ``import detector`` (and ``detector --help``)
does not pay for importing torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__distribution__ = "detector-rt"
"""The name on PyPI (``pip install detector-rt``); the import name is ``detector``."""

_EXPORTS = {
    "MODELS": "detector.models",
    "DEMO_CLIP": "detector.resources",
    "Detector": "detector.predictor",
    "load": "detector.predictor",
    "Detections": "detector.structures",
    "DetectorConfig": "detector.config",
    "load_config": "detector.config",
    "annotate": "detector.render",
    "BoxAnnotator": "detector.render",
    "LabelAnnotator": "detector.render",
    "open_source": "detector.io",
    "Frame": "detector.io",
    "Source": "detector.io",
    "VideoFileSink": "detector.io",
    "ImageSink": "detector.io",
    "JsonlSink": "detector.io",
    "stream": "detector.pipeline",
    "Stream": "detector.pipeline",
    "multi_stream": "detector.pipeline",
    "MultiStream": "detector.pipeline",
    "StopPipeline": "detector.errors",
    "run": "detector.runner",
    "ConfigError": "detector.errors",
    "DetectorError": "detector.errors",
    "SinkError": "detector.errors",
    "SourceError": "detector.errors",
    "WeightsError": "detector.errors",
}

__all__ = [
    "DEMO_CLIP",
    "BoxAnnotator",
    "ConfigError",
    "Detections",
    "Detector",
    "DetectorConfig",
    "DetectorError",
    "Frame",
    "ImageSink",
    "JsonlSink",
    "LabelAnnotator",
    "MODELS",
    "SinkError",
    "Source",
    "SourceError",
    "StopPipeline",
    "MultiStream",
    "Stream",
    "VideoFileSink",
    "WeightsError",
    "annotate",
    "load",
    "load_config",
    "open_source",
    "run",
    "multi_stream",
    "stream",
]

if TYPE_CHECKING:
    from .config import DetectorConfig, load_config
    from .errors import ConfigError, DetectorError, SinkError, SourceError, StopPipeline, WeightsError
    from .io import Frame, ImageSink, JsonlSink, Source, VideoFileSink, open_source
    from .models import MODELS
    from .pipeline import MultiStream, Stream, multi_stream, stream
    from .predictor import Detector, load
    from .render import BoxAnnotator, LabelAnnotator, annotate
    from .resources import DEMO_CLIP
    from .runner import run
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
