"""Sources (frames in) and sinks (results out)."""

from .sinks import ImageSink, JsonlSink, VideoFileSink
from .sources import Frame, ImageSource, SourceInfo, VideoFileSource, open_source

__all__ = [
    "Frame",
    "ImageSink",
    "ImageSource",
    "JsonlSink",
    "SourceInfo",
    "VideoFileSink",
    "VideoFileSource",
    "open_source",
]
