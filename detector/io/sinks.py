"""Outputs: annotated video and images, and a JSON Lines detections file.

Every sink is a context manager with ``write(frame, detections)`` (a
:class:`~detector.io.sources.Frame`, already annotated, and its
:class:`~detector.structures.Detections`) and closes (finalises) in ``finally``;
:func:`detector.runner.run` takes a list of them, yours included. Every file is
written under a temporary name in its own folder and renamed into place once
finalised, so an existing file is only ever replaced by a complete one:

- normal end, Ctrl-C, SIGTERM/SIGHUP (``KeyboardInterrupt``): finalised and renamed into place;
- an error: the frames before it are kept; renamed into place unless that would
  replace an existing file, which then stays as it was and the new output is
  kept beside it as ``<stem>.incomplete<suffix>`` (logged);
- a sink that never got a frame and closes on an error: its temporary file is removed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np

from ..errors import SinkError
from ..structures import Detections
from .base import Closeable
from .types import Frame

log = logging.getLogger(__name__)

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def prepare_output(path: Path, inputs: tuple[Path, ...] = ()) -> Path:
    """Create ``path``'s parent folder and refuse to overwrite an input."""
    resolved = {p.resolve() for p in inputs}
    if path.resolve() in resolved:
        raise SinkError(f"output {path} is an input file; choose another --out/--json path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(
            f"cannot create output folder {path.parent} ({exc.strerror}); choose a writable --out path"
        ) from None
    if path.is_dir():
        raise SinkError(f"output {path} is an existing folder; choose a file name")
    probe = partial_path(path)
    try:  # find an unwritable folder now, not after the model ran
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SinkError(f"cannot write in {path.parent} ({exc.strerror}); choose a writable output path") from None
    return path


def partial_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete: same folder, same extension (codecs go by it)."""
    return path.with_name(f"{path.stem}.partial-{os.getpid()}{path.suffix}")


def _finalise(tmp: Path, final: Path, *, failed: bool, written: int) -> Path | None:
    """Rename a finished temporary file into place, under the rules in the module docstring."""
    if not tmp.exists():
        return None
    if failed and written == 0:
        tmp.unlink(missing_ok=True)
        return None
    target = final
    if failed and final.exists():
        target = final.with_name(f"{final.stem}.incomplete{final.suffix}")
        log.warning("the run failed; %s is left as it was and the frames written are in %s", final, target)
    os.replace(tmp, target)
    return target


class _Sink(Closeable):
    """Base of the file sinks: remembers whether the ``with`` block ended on an error."""

    _failed = False

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._failed = exc_type is not None and not issubclass(exc_type, KeyboardInterrupt)
        self.close()


class _PartialFileSink(_Sink):
    """A sink writing one file under :func:`partial_path`, finalised by :func:`_finalise` on close."""

    path: Path
    _tmp: Path
    _closed = False

    def _release(self) -> None:
        """Flush and close the underlying writer."""

    def _written(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._release()
        finally:  # also when a stop signal lands during release
            done = _finalise(self._tmp, self.path, failed=self._failed, written=self._written())
            if done is not None:
                self.path = done


class VideoFileSink(_PartialFileSink):
    """A video file at the input's size and (float) fps; codec chosen by extension.

    With ``timed=True`` (live sources) each frame is repeated to fill the time
    until the next one, by its ``timestamp``, so the recording plays for as
    long as the recording took, whatever the model's speed.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], *, timed: bool = False) -> None:
        fourcc = VIDEO_FOURCC.get(path.suffix.lower())
        if fourcc is None:
            raise SinkError(f"cannot write video {path}: use one of {', '.join(VIDEO_FOURCC)} as the extension")
        self.path = path
        self.size = size
        self.fps = float(fps)
        self.timed = timed
        self.frames = 0
        """Frames written to the file (with ``timed``, repeats included)."""
        self._first_ts: float | None = None
        self._last: np.ndarray | None = None
        self._tmp = partial_path(path)
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter.fourcc(*fourcc), self.fps, size)
        if not self._writer.isOpened():
            self._writer.release()
            self._tmp.unlink(missing_ok=True)
            raise SinkError(f"cannot write video {path}; check the folder is writable and the extension")

    def write(self, frame: Frame | np.ndarray, detections: Detections | None = None) -> None:
        """Append a frame (already annotated by the pipeline). A ``Frame``'s timestamp drives
        ``timed`` recordings; a bare BGR array is written as the next frame."""
        timestamp = frame.timestamp if isinstance(frame, Frame) else None
        frame = frame.image if isinstance(frame, Frame) else frame
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            raise SinkError(f"frame {w}x{h} differs from the video's {self.size[0]}x{self.size[1]}")
        if self.timed and timestamp is not None:
            if self._first_ts is None:
                self._first_ts = timestamp
            due = int(round((timestamp - self._first_ts) * self.fps))  # this frame's slot in the recording
            while self._last is not None and self.frames < due:
                self._writer.write(self._last)
                self.frames += 1
            self._last = frame.copy()
        self._writer.write(frame)
        self.frames += 1

    def _release(self) -> None:
        self._writer.release()

    def _written(self) -> int:
        return self.frames


class ImageSink(_Sink):
    """Annotated images: one file (``folder=False``) or one per input name in a folder.

    Names may hold sub-folders (images from several folders keep their relative
    paths). Each file is written to a temporary name and renamed into place.
    """

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

    def target(self, name: str) -> Path:
        return self.path / name if self.folder else self.path

    def write(self, frame: Frame, detections: Detections | None = None) -> Path:
        """Write ``frame.image`` as ``frame.name`` in the folder (or as the one output file)."""
        target = self.target(frame.name)
        image = frame.image
        ext = target.suffix.lower() or ".jpg"
        ok, data = cv2.imencode(ext, image)
        if not ok:
            raise SinkError(f"cannot encode {target} as {ext}; use .jpg or .png for --out")
        tmp = partial_path(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            data.tofile(tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SinkError(f"cannot write {target} ({exc.strerror}); choose a writable --out path") from None
        self.frames += 1
        return target


class JsonlSink(_PartialFileSink):
    """One JSON object per frame and line, flushed per line so a crash loses at most the line
    being written: ``{"frame", "time", ["image",] "detections"}``; ``image`` (the frame's name)
    when ``with_image`` (image inputs)."""

    def __init__(self, path: Path, *, with_image: bool = False) -> None:
        self.path = path
        self.with_image = with_image
        self.lines = 0
        self._tmp = partial_path(path)
        try:
            self._file: IO[str] = self._tmp.open("w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"cannot write {path} ({exc.strerror}); choose a writable --json path") from None

    def write(self, frame: Frame, detections: Detections) -> None:
        record: dict[str, Any] = {"frame": frame.index, "time": round(frame.timestamp, 6)}
        if self.with_image:
            record["image"] = frame.name
        record["detections"] = detections.to_dict()
        self.write_record(record)

    def write_record(self, record: dict[str, Any]) -> None:
        """Append any JSON-serialisable object as one line."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def _release(self) -> None:
        self._file.close()

    def _written(self) -> int:
        return self.lines


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (e.g. stats) under a temporary name, then rename it into place."""
    tmp = partial_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SinkError(f"cannot write {path} ({exc.strerror}); choose a writable path") from None
