"""Frame sources: a single image, a folder or glob of images, a video file.

Every source is a :class:`~detector.io.types.Source`: an iterable of
:class:`~detector.io.types.Frame` and a context manager that releases its
capture in ``finally`` -- also when the consumer stops early.
"""

from __future__ import annotations

import glob
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..errors import SourceError
from .types import Frame, Source, SourceInfo, SourceKind

if TYPE_CHECKING:
    from .live import LiveSource

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"})
GLOB_CHARS = frozenset("*?[")
ACCEPTED = "give a folder or glob of images (.jpg, .png, ...) or of videos (.mp4, .avi, ...)"
"""The fix an input with nothing to run suggests."""


def read_image(path: Path) -> np.ndarray | None:
    """``cv2.imread`` that also handles non-ASCII paths; None when undecodable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


class ImageSource(Source):
    """One or more image files, in the given order. Undecodable files in a
    folder are skipped with a warning; a single undecodable image is an error."""

    def __init__(self, paths: list[Path], origin: Path, kind: SourceKind, base: Path | None = None) -> None:
        if not paths:
            raise SourceError(f"no images found at {origin}, nor videos; {ACCEPTED}")
        self.paths = paths
        self.base = base
        """For a glob: the folder before its first wildcard; names are relative to it."""
        self.names = image_names(paths, base)
        """Each image's name relative to ``base`` (sub-folders kept, ``/``-separated): unique per source."""
        first = read_image(paths[0]) if kind == "image" else None
        if kind == "image" and first is None:
            raise SourceError(f"cannot decode {paths[0]} as an image; is it a valid image file?")
        self._first = first
        h, w = first.shape[:2] if first is not None else (None, None)
        self.info = SourceInfo(kind, origin, w, h, None, len(paths))

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            image = self._first if i == 0 and self._first is not None else read_image(path)
            if image is None:
                log.warning("skipping %s: not a decodable image", path)
                continue
            yield Frame(i, 0.0, image, self.names[i], time.perf_counter())


MEASURE_PACKETS = 20_000
"""Packets whose timestamps are read (not decoded) to measure a frame rate the header disagrees
with: about 11 minutes at 30 frames/s, a few hundred milliseconds at most."""


def measured_fps(path: Path, header_fps: float) -> float | None:
    """The average frame rate of ``path``'s video stream, measured from its frames' timestamps,
    when its header disagrees with them; None when they agree or it cannot be told.

    OpenCV's ``CAP_PROP_FPS`` is FFmpeg's ``avg_frame_rate``: frames / the sum of the sample
    durations in the header. One odd duration (an MP4's last sample cut to 1 tick, a recorder's
    rounding) makes it wrong: a 30 frames/s file can claim 30.19 or 30.5, and an output written
    at that rate plays short. FFmpeg's ``r_frame_rate`` (PyAV's ``guessed_rate``) is the usual
    spacing of the timestamps; when the two differ by more than 0.1%, the packets' timestamps
    (read, not decoded, the first :data:`MEASURE_PACKETS`) give (n - 1) / (last - first), the
    rate at which n frames keep the input's duration (also for variable frame rates)."""
    try:
        import av
    except (ImportError, OSError):  # PyAV missing or broken: keep the header's rate
        return None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            usual = stream.guessed_rate or stream.base_rate
            if not usual or abs(float(usual) - header_fps) <= 1e-3 * header_fps:
                return None
            pts: list[int] = []
            for packet in container.demux(stream):
                if packet.pts is not None:
                    pts.append(packet.pts)
                    if len(pts) >= MEASURE_PACKETS:
                        break
            time_base = stream.time_base
    except (av.FFmpegError, IndexError, OSError, ValueError):
        return None
    if len(pts) < 2 or time_base is None:
        return None
    span = float((max(pts) - min(pts)) * time_base)
    return (len(pts) - 1) / span if span > 0 else None


class VideoFileSource(Source):
    """Every frame of a video file in order (none dropped), optionally from
    ``start``, before ``end`` (frame indices) and every ``stride``-th.

    Frame ``i`` is always the i-th frame of a sequential decode: ``start`` is
    reached by decoding forward from the first frame (``grab``, without colour
    conversion), because container seeks land a few frames off on some files
    (H.264 with B-frames) and OpenCV then reports the wrong position.
    A frame's ``timestamp`` is its own presentation time (``CAP_PROP_POS_MSEC``
    after it is read), not ``index / fps``; ``info.fps`` is the rate measured
    from the timestamps when the header's disagrees (see :func:`measured_fps`).
    ``close()`` waits for a ``read()`` in progress on another thread, so the
    capture is never released under a reader.
    """

    def __init__(self, path: Path, *, stride: int = 1, start: int = 0, end: int | None = None) -> None:
        self._window(stride, start, end)
        self._cap = cv2.VideoCapture(str(path))
        try:
            opened = self._cap.isOpened()
            fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0) if opened else 0.0
            count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if opened else 0
            skipped = 0
            while opened and skipped < start and self._cap.grab():
                skipped += 1
            ok, first = self._cap.read() if opened and skipped == start else (False, None)
            first_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if ok else math.nan
            if not ok or first is None:
                if opened and start:
                    raise SourceError(
                        f"--start {start} is past the end of {path}: it has {skipped} frames; "
                        f"use a --start below {skipped}"
                    )
                raise SourceError(f"cannot decode {path} as a video or image; is it a media file OpenCV can read?")
        except BaseException:
            self._cap.release()
            raise
        self._describe(path, first, fps, count, first_ms / 1000)

    def _window(self, stride: int, start: int, end: int | None) -> None:
        """Check and keep ``stride``/``start``/``end``; the read lock (shared with subclasses)."""
        if stride < 1 or start < 0 or (end is not None and end <= start):
            raise SourceError(f"need stride >= 1, start >= 0 and end > start; got {stride}, {start}, {end}")
        self.stride, self.start, self.end = stride, start, end
        self._lock = threading.Lock()
        self._closed = False

    def _describe(self, path: Path, first: np.ndarray, fps: float, count: int, seconds: float) -> None:
        """``info`` (the frame rate measured when the header's disagrees), the first frame and its time in
        seconds (NaN when unknown), from the header's ``fps`` and frame ``count`` (0 for unknown)."""
        self._first: np.ndarray | None = first
        h, w = first.shape[:2]
        if fps > 0:
            measured = measured_fps(path, fps)
            if measured is not None and abs(measured - fps) > 1e-3 * fps:
                log.info("%s: its header says %.4f frames/s, its frames are %.4f frames/s apart on average; "
                         "using %.4f", path, fps, measured, measured)  # fmt: skip
                fps = measured
        self.info = SourceInfo("video", path, w, h, fps if fps > 0 else None, count if count > 0 else None)
        start = self.start
        self._first_time = (
            seconds
            if math.isfinite(seconds) and seconds >= 0 and (seconds > 0 or start == 0)
            else (start / fps if fps > 0 else 0.0)
        )

    @property
    def planned_frames(self) -> int | None:
        """How many frames iteration will yield, from the announced count (None when unknown)."""
        count = self.info.frame_count
        if count is None:
            return None
        stop = min(count, self.end) if self.end is not None else count
        return len(range(self.start, stop, self.stride))

    def _read(self) -> tuple[bool, np.ndarray | None, float]:
        """The next frame and its presentation time in seconds (NaN when OpenCV has none)."""
        with self._lock:
            if self._closed:
                return False, None, math.nan
            ok, frame = self._cap.read()
            return ok, frame, self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 if ok else math.nan

    def __iter__(self) -> Iterator[Frame]:
        fps = self.info.fps or 0.0
        index = self.start
        frame = self._first
        self._first = None
        seconds = self._first_time
        name = Path(self.info.path).stem
        while frame is not None and (self.end is None or index < self.end):
            if (index - self.start) % self.stride == 0:
                yield Frame(index, seconds, frame, name, time.perf_counter())
            ok, frame, pts = self._read()
            if not ok:
                if not self._closed:
                    self._check_length(index + 1)
                break
            index += 1
            # The frame's own time; a stream without timestamps (or a repeated one) steps by 1 / fps.
            seconds = pts if math.isfinite(pts) and pts > seconds else seconds + (1 / fps if fps else 0.0)

    def _check_length(self, decoded: int) -> None:
        """Warn when a video ends well before the frame count its header announces (a damaged
        file); a few frames short is common in valid files and says nothing."""
        announced = self.info.frame_count
        if announced is None:
            return
        expected = min(announced, self.end or announced)
        if expected - decoded > max(10, 0.02 * expected):
            if count_is_estimated(self.info.path):
                log.info("%s ended after %d frames; its %d was an estimate from the file's duration (the file "
                         "stores no frame count), which a longer audio track stretches", self.info.path, decoded,
                         announced)  # fmt: skip
            else:
                log.warning("%s ended after %d of %d announced frames; the file may be truncated or damaged",
                            self.info.path, decoded, announced)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cap.release()


def count_is_estimated(path: str | Path) -> bool:
    """Whether ``path``'s video stream stores no frame count (MPEG-TS, most Matroska/WebM), so OpenCV's
    ``CAP_PROP_FRAME_COUNT`` was its duration times its frame rate -- the container's duration, an audio
    track's when that runs longer. Read with PyAV (installed with detector); False when it cannot tell."""
    try:
        import av
    except ImportError:
        return False
    try:
        with av.open(str(path)) as container:
            video = next((s for s in container.streams if s.type == "video"), None)
            return video is not None and not video.frames
    except Exception:  # noqa: BLE001 (any failure: the count is taken as stored, and the warning stands)
        return False


def _glob_paths(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTS)


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n} files"


def glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (``cams/*/img.jpg`` -> ``cams``)."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if any(c in part for c in GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def image_names(paths: list[Path], base: Path | None) -> list[str]:
    """Names for output files and JSON lines: relative to ``base`` when given, else the file name."""
    if base is None:
        return [p.name for p in paths]
    names = []
    for p in paths:
        try:
            names.append(p.relative_to(base).as_posix())
        except ValueError:
            names.append(p.name)
    return names


STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


DECODERS = ("auto", "cpu", "nvdec")
"""Where video files are decoded (``--decode``): ``auto`` is NVDEC on a CUDA run when it can decode
the file (else the CPU), ``cpu`` is OpenCV, ``nvdec`` is NVDEC or an error."""


def open_source(
    spec: str | Path | int,
    *,
    stride: int = 1,
    start: int = 0,
    end: int | None = None,
    decode: str = "cpu",
    gpu: int | None = None,
) -> ImageSource | VideoFileSource | LiveSource:
    """Open a webcam index (``0``), an RTSP/HTTP(S) stream URL, an image, a folder
    or glob of images, or a video file. ``stride``/``start``/``end`` apply to video files.

    ``decode`` (one of :data:`DECODERS`) and ``gpu`` (the CUDA device index of the run, None when it
    is not on CUDA) choose where a video file is decoded: see :mod:`detector.io.nvdec`. Other
    inputs are decoded on the CPU whatever ``decode`` says (``nvdec`` is then an error)."""
    from .live import open_camera, open_stream

    if decode not in DECODERS:
        raise SourceError(f"decode must be one of {', '.join(DECODERS)}, got {decode!r}")
    text = str(spec)
    if decode == "nvdec" and _not_a_video(text):
        raise SourceError(f"--decode nvdec is for video files and {text} is not one; use --decode auto or cpu")
    if isinstance(spec, int) or text.isdigit():
        return open_camera(int(text))
    if text.lower().startswith(STREAM_SCHEMES):
        return open_stream(text)
    path = Path(text).expanduser()
    if any(c in text for c in GLOB_CHARS) and not path.exists():
        images = _glob_paths(str(path))
        if not images:
            matched = [p for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
            if not matched:
                raise SourceError(f"the glob {path} matched no file; check its folder and pattern")
            _no_folder_of_videos(path, [Path(p) for p in matched])
            raise SourceError(f"the glob {path} matched {_files(len(matched))} but no images or videos; {ACCEPTED}")
        return ImageSource(images, path, "images", base=glob_base(str(path)))
    if not path.exists():
        raise SourceError(f"input {path} not found; check the path")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not images:
            files = [p for p in path.iterdir() if p.is_file()]
            _no_folder_of_videos(path, files)
            others = len(files)
            what = f"it holds {_files(others)} of other kinds" if others else "it holds no file"
            raise SourceError(f"no images found in {path}, nor videos ({what}); {ACCEPTED}")
        return ImageSource(images, path, "images")
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageSource([path], path, "image")
    if decode == "nvdec" or (decode == "auto" and gpu is not None):
        from .nvdec import NvdecUnavailable, PyAVVideoSource

        try:
            if gpu is None:
                raise NvdecUnavailable("this run is not on a CUDA device (--device cuda)")
            return PyAVVideoSource(path, gpu=gpu, stride=stride, start=start, end=end)
        except NvdecUnavailable as exc:
            if decode == "nvdec":
                raise NvdecUnavailable(f"cannot decode {path} with NVDEC: {exc}; use --decode cpu (or auto)") from None
            log.info("%s: decoded on the CPU, not NVDEC: %s", path, exc)
    return VideoFileSource(path, stride=stride, start=start, end=end)


def _no_folder_of_videos(spec: Path, files: list[Path]) -> None:
    """A folder or glob of videos is not one source (``detector run FOLDER`` runs it, a video at a time):
    say so, rather than that it holds no videos."""
    from .videos import VIDEO_EXTS

    videos = sum(1 for p in files if p.suffix.lower() in VIDEO_EXTS)
    if videos:
        raise SourceError(f"{spec} holds videos ({_files(videos)}) and no images: a source is one video or "
                          f"images; run the videos with `detector run {spec}` (in Python: "
                          "detector.folder_run.run_folder)")  # fmt: skip


def _not_a_video(text: str) -> bool:
    """Whether ``text`` names an input other than a video file: a camera, a stream, a folder, a glob,
    an image (a missing file is left to the "not found" error)."""
    if text.isdigit() or text.lower().startswith(STREAM_SCHEMES):
        return True
    path = Path(text).expanduser()
    globbed = any(c in text for c in GLOB_CHARS) and not path.exists()
    return globbed or path.is_dir() or path.suffix.lower() in IMAGE_EXTS
