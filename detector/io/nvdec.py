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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SourceError
from .sources import VideoFileSource

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


PLANAR = {"nv12": "yuv420p", "nv21": "yuv420p", "nv16": "yuv422p", "nv24": "yuv444p",
          "p010le": "yuv420p10le", "p016le": "yuv420p16le"}  # fmt: skip
"""Semi-planar pictures (what NVDEC gives: NV12, P010/P016 for 10/16 bits) by the planar format of the
same samples, which the CPU decoders give and OpenCV converts."""


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """``frame`` as a BGR uint8 array, converted as OpenCV's FFmpeg backend converts it.

    OpenCV converts with FFmpeg's swscale and ``SWS_BICUBIC`` (PyAV's default is bilinear, which
    gives other pixels for odd sizes and for 10-bit video). A semi-planar picture is first repacked,
    losslessly, to the planar one of the same samples: swscale converts planar 4:2:0 to BGR with
    another code path than NV12 (up to 63 levels apart at colour edges on the shared clip). The
    colour space, range and the other frame properties travel with the picture."""
    planar = PLANAR.get(frame.format.name)
    if planar is not None:
        frame = frame.reformat(format=planar)
    return frame.to_ndarray(format="bgr24", interpolation="BICUBIC")


def _opencv_header(path: Path) -> tuple[float, int]:
    """OpenCV's ``CAP_PROP_FPS`` and ``CAP_PROP_FRAME_COUNT`` of ``path`` (0 for what it cannot tell), so
    that ``info`` is :class:`VideoFileSource`'s to the digit (OpenCV mixes the header's rate, the
    container's and the stream's durations in its own order)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0.0, 0
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()


class PyAVVideoSource(VideoFileSource):
    """Every frame of a video file in order, decoded by PyAV: on NVDEC when ``gpu`` is a CUDA device
    index, on the CPU when None. Frames, indices, timestamps, ``info`` and ``stride``/``start``/``end``
    as :class:`VideoFileSource` gives them (it is one, to the rest of the pipeline).

    Opening it decodes up to the first frame wanted, so a file NVDEC cannot decode raises
    :class:`NvdecUnavailable` here, before any output exists. Should NVDEC fail later (a resolution
    change it cannot follow, a device error), the rest of the file is decoded by OpenCV from the next
    frame on, with a warning: the run goes on, as it would have on the CPU."""

    def __init__(self, path: Path, *, gpu: int | None, stride: int = 1, start: int = 0, end: int | None = None) -> None:
        self._window(stride, start, end)
        why = nvdec_unavailable() if gpu is not None else None
        if why is not None:
            raise NvdecUnavailable(why)
        import av
        from av.codec.hwaccel import HWAccel

        self.gpu = gpu
        self._path = path
        self._cpu: Any = None  # OpenCV's capture, after NVDEC failed midway
        self._taken = 0  # frames taken from the decoder so far
        hw = (
            # the primary context is the one torch uses: no second CUDA context per video
            HWAccel("cuda", device=str(gpu), allow_software_fallback=False, options={"primary_ctx": "1"})
            if gpu is not None
            else None
        )
        try:
            self._container = av.open(str(path), hwaccel=hw)
        except RuntimeError as exc:  # PyAV: no stream's codec has a CUDA configuration
            codec = _codec(path)
            if hw is not None and codec is not None:
                raise NvdecUnavailable(f"NVDEC has no decoder for {codec}") from None
            raise SourceError(f"cannot decode {path} as a video ({exc}); is it a media file FFmpeg can read?") from None
        except (av.FFmpegError, NotImplementedError) as exc:
            # the device could not be created (EPERM without a driver), or the file cannot be read:
            # the file without hwaccel tells which
            if hw is not None and _codec(path) is not None:
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
            first = None
            try:
                while self._taken < start:
                    next(self._frames)  # decoded, not converted
                    self._taken += 1
                first = next(self._frames)
                self._taken += 1
            except StopIteration:
                if start:
                    raise SourceError(f"--start {start} is past the end of {path}: it has {self._taken} frames; "
                                      f"use a --start below {self._taken}") from None  # fmt: skip
                raise SourceError(f"{path} has no frames to decode; is the file complete?") from None
            except av.FFmpegError as exc:
                if gpu is not None:
                    raise NvdecUnavailable(f"NVDEC failed on frame {self._taken} ({exc})") from None
                raise SourceError(f"cannot decode {path} ({exc}); is the file complete?") from None
            image = to_bgr(first)
        except BaseException:
            self._container.close()
            raise
        fps, count = _opencv_header(path)
        self._describe(path, image, fps, count, self._seconds(first))

    def _seconds(self, frame: av.VideoFrame) -> float:
        """The frame's time from the stream's start as OpenCV's ``CAP_PROP_POS_MSEC`` tells it: its
        pts, or its packet's dts where the pts is missing or 0 (AVI with B-frames, say)."""
        ticks = frame.pts if frame.pts else frame.dts
        base = frame.time_base or self._stream.time_base
        if ticks is None or base is None:
            return math.nan
        return float((ticks - self._origin) * base)

    def _read(self) -> tuple[bool, np.ndarray | None, float]:
        import av

        with self._lock:
            if self._closed:
                return False, None, math.nan
            if self._cpu is not None:
                return self._read_cpu()
            try:
                frame = next(self._frames)
            except StopIteration:
                return False, None, math.nan
            except av.FFmpegError as exc:
                if self.gpu is None:  # a damaged packet ends the file, as OpenCV's read() does
                    log.warning("%s: decoding stopped (%s)", self.info.path, exc)
                    return False, None, math.nan
                return self._to_cpu(exc)
            self._taken += 1
            return True, to_bgr(frame), self._seconds(frame)

    def _to_cpu(self, exc: Exception) -> tuple[bool, np.ndarray | None, float]:
        """NVDEC failed midway: OpenCV takes over from the next frame (decoded up to it, unconverted)."""
        import cv2

        log.warning("%s: NVDEC failed after %d frames (%s); decoding the rest on the CPU", self._path, self._taken, exc)
        self._container.close()
        self._cpu = cv2.VideoCapture(str(self._path))
        skipped = 0
        while skipped < self._taken and self._cpu.grab():
            skipped += 1
        return self._read_cpu()

    def _read_cpu(self) -> tuple[bool, np.ndarray | None, float]:
        import cv2

        ok, image = self._cpu.read()
        self._taken += int(ok)
        return ok, image, self._cpu.get(cv2.CAP_PROP_POS_MSEC) / 1000 if ok else math.nan

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            frames = getattr(self, "_frames", None)
            if frames is not None:
                frames.close()
            self._frames = self._stream = None  # type: ignore[assignment]  # the decoder goes with them
            self._container.close()
            if self._cpu is not None:
                self._cpu.release()


def _codec(path: Path) -> str | None:
    """The codec of ``path``'s first video stream as FFmpeg names it, None when FFmpeg cannot open it."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            return streams[0].codec_context.name if streams else None
    except (av.FFmpegError, OSError, ValueError):
        return None
