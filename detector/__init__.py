"""detector: real-time object detection with torchvision's ResNet-50-FPN detectors.

Public API::

    from detector import Detector, Detections, load_config, annotate
    det = Detector.from_config(load_config("configs/faster_rcnn_r50_fpn.yaml"))
    dets = det(frame_bgr)            # Detections: boxes xyxy, scores, labels, names
"""

from .config import DetectorConfig, load_config
from .errors import ConfigError, DetectorError, SinkError, SourceError, WeightsError
from .models import MODELS, Detector
from .render import annotate
from .structures import Detections

__version__ = "0.1.0"

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
]
