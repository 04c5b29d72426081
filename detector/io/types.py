"""Types shared by every source and sink: ``Frame``, ``SourceInfo`` and the ``Source`` base.

File sources (:mod:`.sources`) and live sources (:mod:`.live`) both build on
this module and on nothing of each other's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .base import Closeable

SourceKind = Literal["image", "images", "video", "camera", "stream"]


@dataclass(frozen=True)
class Frame:
    index: int
    """Position in the source (0-based; counts every decoded frame, also skipped ones)."""
    timestamp: float
    """Seconds since the start of the source: for video files the frame's own presentation time
    (its timestamp in the file, not index / fps: a header's rate may disagree with its frames);
    for live sources the capture time; 0 for images."""
    image: np.ndarray
    """BGR uint8 (H, W, 3)."""
    name: str
    """File name for images, ``<video stem>`` for video frames, the source spec for live frames."""
    captured_at: float = 0.0
    """``time.perf_counter()`` when the frame was decoded or captured (for latency figures)."""


@dataclass(frozen=True)
class SourceInfo:
    kind: SourceKind
    path: Path | str
    """The file or folder; for cameras the index, for streams the URL (password redacted)."""
    width: int | None
    height: int | None
    fps: float | None
    """Frames per second; for video files the average measured from the frames' timestamps when
    the header's rate disagrees with them (see :func:`detector.io.sources.measured_fps`)."""
    frame_count: int | None


class Source(Closeable):
    """Frames in order; ``with source:`` releases the capture, also when iteration stops early."""

    info: SourceInfo
    live: bool = False
    """True for cameras and streams: a capture thread keeps only the newest frame, so
    consumers must not queue frames (they would go stale)."""

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError
