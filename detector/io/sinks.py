"""Outputs: annotated video and images, and a JSON Lines detections file.

Sinks are context managers and close (finalise) in ``finally``. Nothing is
written over the input the user gave us.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from ..errors import SinkError
from .base import Closeable

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def prepare_output(path: Path, inputs: tuple[Path, ...] = ()) -> Path:
    """Create ``path``'s parent folder and refuse to overwrite an input."""
    for src in inputs:
        if src.exists() and path.exists() and path.resolve() == src.resolve():
            raise SinkError(f"output {path} is the input file; choose another --out path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(
            f"cannot create output folder {path.parent} ({exc.strerror}); choose a writable --out path"
        ) from None
    return path


class _Sink(Closeable):
    """Base of the file sinks."""


class VideoFileSink(_Sink):
    """A video file at the input's size and (float) fps; codec chosen by extension."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        fourcc = VIDEO_FOURCC.get(path.suffix.lower())
        if fourcc is None:
            raise SinkError(f"cannot write video {path}: use one of {', '.join(VIDEO_FOURCC)} as the extension")
        self.path = path
        self.size = size
        self.frames = 0
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), float(fps), size)
        if not self._writer.isOpened():
            self._writer.release()
            raise SinkError(f"cannot write video {path}; check the folder exists and is writable")

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            raise SinkError(f"frame {w}x{h} differs from the video's {self.size[0]}x{self.size[1]}")
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self._writer.release()


class ImageSink(_Sink):
    """Annotated images: one file (``folder=False``) or one per input name in a folder."""

    def __init__(self, path: Path, *, folder: bool) -> None:
        self.path = path
        self.folder = folder
        self.frames = 0
        if folder:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(
                    f"cannot create output folder {path} ({exc.strerror}); choose a writable --out"
                ) from None

    def write(self, frame: np.ndarray, name: str) -> Path:
        target = self.path / name if self.folder else self.path
        ext = target.suffix.lower() or ".jpg"
        ok, data = cv2.imencode(ext, frame)
        if not ok:
            raise SinkError(f"cannot encode {target} as {ext}; use .jpg or .png for --out")
        try:
            data.tofile(target)
        except OSError as exc:
            raise SinkError(f"cannot write {target} ({exc.strerror}); choose a writable --out path") from None
        self.frames += 1
        return target


class JsonlSink(_Sink):
    """One JSON object per line, flushed per line so a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        try:
            self._file: IO[str] = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"cannot write {path} ({exc.strerror}); choose a writable --json path") from None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        self._file.close()
