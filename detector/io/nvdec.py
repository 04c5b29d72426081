"""Video files decoded by PyAV on an NVIDIA GPU's video decoder (NVDEC), for CUDA runs.

At a few hundred frames/s the host's share of a GPU run is what sets its speed; decoding H.264 is
one of the largest parts of it (a few ms of CPU per 720p frame). :class:`PyAVVideoSource` with
``gpu=N`` hands the bitstream to NVDEC through FFmpeg's CUDA hwaccel (PyAV's
``HWAccel("cuda")``): the GPU decodes, the host receives the NV12 picture and only converts it to
BGR. The frames are those OpenCV would give (same pixels: NV12 is repacked to the planar 4:2:0
OpenCV's FFmpeg backend converts, with the frame's colour space and range; same indices and
timestamps), so a run's detections do not depend on where its video was decoded.

With ``gpu=None`` the same class decodes with PyAV on the CPU: the tests check it against OpenCV on
machines without a GPU, so that all but opening the hardware decoder is exercised everywhere.

:func:`detector.io.sources.open_source` picks it (``decode="auto"``: on a CUDA run when NVDEC can
decode the file, else OpenCV with one INFO line saying why; ``"nvdec"``: or an error).
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ..errors import SourceError
from .sources import VideoFileSource, measured_fps
from .types import SourceInfo

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)


class NvdecUnavailable(SourceError):
    """NVDEC cannot decode this file here (no CUDA device or driver, no NVDEC decoder for its codec,
    PyAV without CUDA support); the message says which."""


def nvdec_unavailable() -> str | None:
    """Why NVDEC cannot be used in this process at all (None when it may: the file decides)."""
    try:
        from av.codec.hwaccel import hwdevices_available
    except (ImportError, OSError):
        return "PyAV is not installed (pip install av)"
    if "cuda" not in hwdevices_available():
        return "this PyAV's FFmpeg was built without CUDA"
    return None


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """``frame`` as a BGR uint8 array, converted as OpenCV's FFmpeg backend converts it.

    An NV12 picture (what NVDEC gives) is repacked to planar 4:2:0 first: FFmpeg converts planar
    4:2:0 to BGR with its unscaled converter, which OpenCV's capture uses, and NV12 with its
    generic scaler, which interpolates chroma differently (up to 63 levels apart at colour edges
    on the shared clip). The colour space and range tags travel with the picture."""
    if frame.format.name == "nv12":
        import av

        w, h = frame.width, frame.height
        cw, ch = (w + 1) // 2, (h + 1) // 2
        planar = av.VideoFrame(w, h, "yuv420p")
        y_in, uv_in = frame.planes
        luma = _rows(y_in)[:h, :w]
        chroma = _rows(uv_in)[:ch, : 2 * cw].reshape(ch, cw, 2)
        for plane, values in zip(planar.planes, (luma, chroma[..., 0], chroma[..., 1]), strict=True):
            rows, cols = values.shape
            _rows(plane)[:rows, :cols] = values
        planar.colorspace = frame.colorspace
        planar.color_range = frame.color_range
        frame = planar
    return frame.to_ndarray(format="bgr24")


def _rows(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A plane's bytes as rows of its line size (padding included), without a copy."""
    return np.frombuffer(cast("memoryview", plane), np.uint8).reshape(-1, plane.line_size)


class PyAVVideoSource(VideoFileSource):
    """Every frame of a video file in order, decoded by PyAV: on NVDEC when ``gpu`` is a CUDA device
    index, on the CPU when None. Frames, indices, timestamps, ``info`` and ``stride``/``start``/``end``
    as :class:`VideoFileSource` gives them (it is one, to the rest of the pipeline).

    Opening it decodes up to the first frame wanted, so a file NVDEC cannot decode raises
    :class:`NvdecUnavailable` here (before any output exists), never midway."""

    def __init__(self, path: Path, *, gpu: int | None, stride: int = 1, start: int = 0, end: int | None = None) -> None:
        if stride < 1 or start < 0 or (end is not None and end <= start):
            raise SourceError(f"need stride >= 1, start >= 0 and end > start; got {stride}, {start}, {end}")
        why = nvdec_unavailable() if gpu is not None else None
        if why is not None:
            raise NvdecUnavailable(why)
        import av
        from av.codec.hwaccel import HWAccel

        self.stride, self.start, self.end = stride, start, end
        self.gpu = gpu
        self._lock = threading.Lock()
        self._closed = False
        hw = HWAccel("cuda", device=str(gpu), allow_software_fallback=False) if gpu is not None else None
        try:
            self._container = av.open(str(path), hwaccel=hw)
        except (av.FFmpegError, RuntimeError, NotImplementedError) as exc:
            # PyAV says "no usable device" with any of these (EPERM without a driver, RuntimeError
            # when no stream could take the device): the file without hwaccel tells which it was.
            if hw is not None and _opens(path):
                raise NvdecUnavailable(f"NVDEC could not be opened on cuda:{gpu} ({exc})") from None
            raise SourceError(f"cannot decode {path} as a video ({exc}); is it a media file FFmpeg can read?") from None
        try:
            if not self._container.streams.video:
                raise SourceError(f"{path} has no video stream; give a video file")
            stream = self._container.streams.video[0]
            if gpu is not None and not stream.codec_context.is_hwaccel:
                raise NvdecUnavailable(f"NVDEC has no decoder for {stream.codec_context.name}")
            if gpu is None:
                stream.thread_type = "AUTO"  # frame threads, as OpenCV's FFmpeg backend decodes
            self._stream = stream
            self._frames = self._container.decode(stream)
            self._origin = stream.start_time or 0
            first, skipped = None, 0
            try:
                while skipped < start:
                    next(self._frames)  # decoded, not converted
                    skipped += 1
                first = next(self._frames)
            except StopIteration:
                if start:
                    raise SourceError(f"--start {start} is past the end of {path}: it has {skipped} frames; "
                                      f"use a --start below {skipped}") from None  # fmt: skip
                raise SourceError(f"{path} has no frames to decode; is the file complete?") from None
            except av.FFmpegError as exc:
                if gpu is not None:
                    raise NvdecUnavailable(f"NVDEC failed on its first frame ({exc})") from None
                raise SourceError(f"cannot decode {path} ({exc}); is the file complete?") from None
            image = to_bgr(first)
        except BaseException:
            self._container.close()
            raise
        fps = _header_fps(stream)
        if fps > 0:
            measured = measured_fps(path, fps)
            if measured is not None and abs(measured - fps) > 1e-3 * fps:
                log.info("%s: its header says %.4f frames/s, its frames are %.4f frames/s apart on average; "
                         "using %.4f", path, fps, measured, measured)  # fmt: skip
                fps = measured
        count = _frame_count(self._container, stream, fps)
        h, w = image.shape[:2]
        self.info = SourceInfo("video", path, w, h, fps if fps > 0 else None, count)
        self._first = image
        seconds = self._seconds(first)
        self._first_time = (
            seconds
            if math.isfinite(seconds) and seconds >= 0 and (seconds > 0 or start == 0)
            else (start / fps if fps > 0 else 0.0)
        )

    def _seconds(self, frame: av.VideoFrame) -> float:
        """The frame's presentation time from the stream's start, as OpenCV's ``CAP_PROP_POS_MSEC``."""
        pts = frame.pts
        base = frame.time_base or self._stream.time_base
        if pts is None or base is None:
            return math.nan
        return float((pts - self._origin) * base)

    def _read(self) -> tuple[bool, np.ndarray | None, float]:
        import av

        with self._lock:
            if self._closed:
                return False, None, math.nan
            try:
                frame = next(self._frames)
            except StopIteration:
                return False, None, math.nan
            except av.FFmpegError as exc:  # a damaged packet ends the file, as OpenCV's read() does
                log.warning("%s: decoding stopped (%s)", self.info.path, exc)
                return False, None, math.nan
            return True, to_bgr(frame), self._seconds(frame)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._container.close()


def _opens(path: Path) -> bool:
    """Whether FFmpeg opens ``path`` as a file with a video stream (on the CPU)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except (av.FFmpegError, OSError, ValueError):
        return False


def _header_fps(stream: av.video.stream.VideoStream) -> float:
    """OpenCV's ``CAP_PROP_FPS``: the average frame rate, else the usual one."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _frame_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float) -> int | None:
    """OpenCV's ``CAP_PROP_FRAME_COUNT``: the header's count, else duration x frame rate (None if neither)."""
    if stream.frames > 0:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None and fps > 0:
        return int(math.floor(float(stream.duration * stream.time_base) * fps + 0.5)) or None
    if container.duration and fps > 0:
        return int(math.floor(container.duration / 1_000_000 * fps + 0.5)) or None
    return None
