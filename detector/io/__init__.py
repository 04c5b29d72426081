"""Sources (frames in) and sinks (results out)."""

from .sinks import ImageSink, JsonlSink, VideoFileSink
from .sources import ImageSource, VideoFileSource, open_source
from .types import Frame, Source, SourceInfo

__all__ = [
    "Frame",
    "ImageSink",
    "ImageSource",
    "JsonlSink",
    "Source",
    "SourceInfo",
    "VideoFileSink",
    "VideoFileSource",
    "open_source",
]
