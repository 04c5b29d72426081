"""Tracking-free overlays drawn with OpenCV."""

from .annotators import Annotator, BoxAnnotator, LabelAnnotator, annotate
from .palette import class_color

__all__ = ["Annotator", "BoxAnnotator", "LabelAnnotator", "annotate", "class_color"]
