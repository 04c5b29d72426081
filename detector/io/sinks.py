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
- a sink that never got a frame and closes on an error: its temporary file is removed;
- a full disk (``ENOSPC``, ``EDQUOT``) or a file-size limit (``EFBIG``, ``ulimit -f``): a
  :class:`DiskFullError`, one line that says what each file sink kept: a file that decodes (named,
  with the frames or lines it holds) or nothing (an unfinished file is removed, not named).

Video codecs (:class:`VideoFileSink`): ``.mp4``, ``.m4v``, ``.mov`` and ``.mkv`` are H.264
(libx264 through PyAV, yuv420p; MP4/MOV with ``+faststart`` so a browser starts playing before
the whole file has loaded), or OpenCV's MPEG-4 part 2 (``mp4v``; ``XVID`` for ``.mkv``) when
PyAV is missing, has no libx264, or its encoder fails to open; ``.avi`` is always OpenCV's MJPG.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
from fractions import Fraction
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any

import cv2
import numpy as np

from ..config import CODECS
from ..errors import SinkError
from ..structures import Detections
from .base import Closeable
from .sources import IMAGE_EXTS
from .types import Frame

log = logging.getLogger(__name__)

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
"""Every video extension written, and its OpenCV codec (the fallback for the H.264 ones)."""
H264_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
"""Extensions written as H.264 when PyAV can (``codec="auto"``), or must be (``codec="h264"``)."""
"""``codec`` values of :class:`VideoFileSink` (``--codec``): H.264 when available else OpenCV's
mp4v; H.264 or an error; OpenCV's MPEG-4 part 2 as before H.264 (MJPG for ``.avi`` whatever the value)."""
X264_OPTIONS = {"preset": "ultrafast", "crf": "23"}
"""libx264 settings; see :class:`_H264Writer` for why."""
_FASTSTART = (".mp4", ".m4v", ".mov")
_OPENCV_NAMES = {"mp4v": ("mp4v", "MPEG-4 part 2"), "XVID": ("mp4v", "MPEG-4 part 2"), "MJPG": ("mjpg", "Motion JPEG")}
_FULL_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit was reached",
}
"""The write errors that mean "no room": each becomes a :class:`DiskFullError`."""
_SPACE_CHECK_EVERY = 16
"""OpenCV's writers ignore write errors: every this many frames the file is checked for room (a
``stat``; when it did not grow, a probe write, see :func:`_room_left`)."""


class DiskFullError(SinkError):
    """A write failed for lack of room: a full disk (``ENOSPC``), a quota (``EDQUOT``) or a
    file-size limit (``EFBIG``, e.g. ``ulimit -f``). One line; while the run unwinds, each file
    sink closing after it adds what it kept (:attr:`kept`), so the line ends by saying truthfully
    which files hold what, or that nothing was kept."""

    def __init__(self, path: Path, code: int, *, action: str = "write") -> None:
        self.path = path
        self.errno = code
        self.action = action
        self.kept: list[str] = []
        """One clause per file sink, e.g. ``the first 12 frames are in out/x.mkv``."""
        super().__init__(path, code)  # the arguments that rebuild it (pickling); the rest is in __dict__

    def __str__(self) -> str:
        reason = _FULL_REASONS.get(self.errno, "no room")
        hint = "raise the file-size limit (ulimit -f)" if self.errno == errno.EFBIG else "free some space"
        kept = "".join(f"; {note}" for note in self.kept)
        return f"cannot {self.action} {self.path}: {reason} ({os.strerror(self.errno)}){kept}; {hint} and run again"


def _room_errno(exc: BaseException) -> int | None:
    """The errno of ``exc`` when it means "no room" (see :data:`_FULL_REASONS`), else None."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    return code if code in _FULL_REASONS else None


_PROBE_BYTES = 64 * 1024
"""What :func:`_room_left` tries to write: more than one encoded frame of a small video."""


def _room_left(folder: Path) -> int | None:
    """Write :data:`_PROBE_BYTES` to a probe file in ``folder`` (then remove it): the errno when
    that fails for lack of room, else None. Asked of the file system itself, because free-space
    figures mislead (ext4 keeps blocks that even root cannot use; quotas do not show)."""
    probe = folder / f".detector-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(_PROBE_BYTES))
        finally:
            os.close(fd)
    except OSError as exc:
        return _room_errno(exc)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def _size_limit() -> int | None:
    """The soft file-size limit (``ulimit -f``) in bytes, None when unlimited."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _out_of_room(path: Path, last_size: int | None) -> tuple[int | None, int]:
    """For writers that do not report write errors (OpenCV's): ``(errno, size)``, the errno being
    ``EFBIG`` when ``path`` has reached the file-size limit, or the one :func:`_room_left` gets
    when the file did not grow since ``last_size`` (``None``: probe anyway), else None."""
    try:
        size = path.stat().st_size
    except OSError:
        return None, 0
    limit = _size_limit()
    if limit is not None and size >= limit:
        return errno.EFBIG, size
    if last_size is None or size == last_size:
        return _room_left(path.parent), size
    return None, size


def count_decodable_frames(path: Path) -> int:
    """How many frames OpenCV decodes from ``path``, in order, until the first failure (0 when it
    does not open): what a partly written video still holds."""
    cap = cv2.VideoCapture(str(path))
    try:
        frames = 0
        while cap.isOpened() and cap.grab():
            frames += 1
        return frames
    finally:
        cap.release()


def _import_av() -> ModuleType:
    import av

    return av


def h264_unavailable() -> str | None:
    """Why H.264 cannot be written here (``"PyAV is not installed"`` or ``"PyAV has no libx264"``),
    or ``None`` when it can."""
    try:
        av = _import_av()
    except (ImportError, OSError):  # OSError: a broken install (a shared library missing)
        return "PyAV is not installed"
    if "libx264" not in av.codecs_available:
        return "PyAV has no libx264"
    return None


def check_video_codec(path: Path, codec: str = "auto") -> None:
    """Raise a one-line ``SinkError`` unless a video can be written as ``path`` with ``codec``
    (an extension of :data:`VIDEO_FOURCC`, a value of :data:`CODECS`, H.264 available if asked for)."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FOURCC:
        raise SinkError(f"cannot write video {path}: use one of {', '.join(VIDEO_FOURCC)} as the extension")
    if codec not in CODECS:
        raise SinkError(f"unknown video codec {codec!r}; use one of {', '.join(CODECS)}")
    if codec != "h264":
        return
    if suffix not in H264_SUFFIXES:
        raise SinkError(f"cannot write H.264 as {path.name}: {suffix} is written as MJPG; use .mp4 (or --codec auto)")
    why = h264_unavailable()
    if why is not None:
        raise SinkError(f"cannot write H.264 video {path}: {why}; pip install av (or use --codec mp4v)")


OUTPUT_KINDS = {
    "video": ("an annotated video", tuple(VIDEO_FOURCC)),
    "image": ("an annotated image", tuple(sorted(IMAGE_EXTS))),
    "jsonl": ("JSON Lines of detections", (".jsonl",)),
    "stats": ("stats JSON", (".json",)),
}
"""Output kind -> (what is written, the extensions of the existing files it may replace)."""


def prepare_output(path: Path, inputs: tuple[Path, ...] = (), *, kind: str | None = None) -> Path:
    """Create ``path``'s parent folder and refuse to overwrite an input, a folder, a device, or (with
    ``kind``, one of :data:`OUTPUT_KINDS`) an existing file of another kind: an output replaces only
    an earlier output of its own kind (stats a ``.json``, detections a ``.jsonl``, a video a video)."""
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
    if path.exists() and not path.is_file():  # finished outputs are renamed into place: it would be replaced
        raise SinkError(f"output {path} is not a regular file (a device, pipe or socket); choose a file path")
    if kind is not None and path.exists():
        what, suffixes = OUTPUT_KINDS[kind]
        if path.suffix.lower() not in suffixes:
            raise SinkError(
                f"{path} exists and is not a {'/'.join(suffixes[:3])} file; {what} would replace it: "
                "choose another path (an output replaces only an earlier output of its kind)"
            )
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
    """Base of the file sinks: remembers whether the ``with`` block ended on an error, and which."""

    _failed = False
    _unwinding: BaseException | None = None
    """The exception that ends the ``with`` block, if any."""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._failed = exc_type is not None and not issubclass(exc_type, KeyboardInterrupt)
        self._unwinding = exc
        self.close()

    def _report_full(self, full: DiskFullError, note: str) -> None:
        """Say what this sink kept after running out of room: in the :class:`DiskFullError` that
        ends the run (raised here when nothing else is), or logged beside another error."""
        unwinding = self._unwinding
        if isinstance(unwinding, DiskFullError):
            unwinding.kept.append(note)
            return
        if unwinding is None:
            if note not in full.kept:
                full.kept.append(note)
            raise full
        log.warning("%s; %s", full, note)  # another error (or a stop signal) ends the run: it stays the one raised


class _PartialFileSink(_Sink):
    """A sink writing one file under :func:`partial_path`, finalised by :func:`_finalise` on close.

    Out of room (:class:`DiskFullError`, from a write or from finishing the file), only what still
    reads back is kept (:meth:`_salvage`): the file is renamed as after any failure, or removed
    when nothing in it is usable, and :meth:`_kept_note` says which.
    """

    path: Path
    _tmp: Path
    _closed = False
    _full: DiskFullError | None = None
    """Set when a write ran out of room; close() then keeps only what reads back."""

    def _release(self) -> None:
        """Flush and close the underlying writer; out of room, raise a :class:`DiskFullError`."""

    def _written(self) -> int:
        raise NotImplementedError

    def _salvage(self) -> int:
        """How many frames (or lines) of the closed temporary file read back (0: nothing usable)."""
        return self._written()

    def _kept_note(self, done: Path | None, kept: int) -> str:
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        full = self._full
        try:
            self._release()
        except DiskFullError as exc:
            full = full or exc
        except BaseException:  # also a stop signal landing during release
            self._finalise(failed=self._failed, written=self._written())
            raise
        if full is None:
            self._finish()
            return
        kept = self._salvage() if self._tmp.exists() else 0
        if self._full is None and kept >= self._written() > 0:  # only finishing failed, yet every frame reads back
            log.warning("%s; every frame written still decodes, so it is kept", full)
            self._finish()
            return
        existed = self.path.exists()
        done = self._finalise(failed=True, written=kept)
        note = self._kept_note(done, kept)
        if done is None and existed:
            note += f" ({self.path} is left as it was)"
        self._report_full(full, note)

    def _finish(self) -> None:
        """Finalise the file written in full; when another file ran out of room, say what this one kept."""
        done = self._finalise(failed=self._failed, written=self._written())
        if isinstance(self._unwinding, DiskFullError):
            self._unwinding.kept.append(self._kept_note(done, self._written()))

    def _finalise(self, *, failed: bool, written: int) -> Path | None:
        # A stop signal before the first frame: nothing to keep, and an earlier file of this name stays.
        stopped_empty = isinstance(self._unwinding, KeyboardInterrupt) and written == 0
        done = _finalise(self._tmp, self.path, failed=failed or stopped_empty, written=written)
        if done is not None:
            self.path = done
        return done


class _OpenCVWriter:
    """``cv2.VideoWriter`` with a FourCC: MPEG-4 part 2 (mp4v, XVID) or MJPG."""

    def __init__(self, path: Path, tmp: Path, fourcc: str, fps: float, size: tuple[int, int], *, timed: bool) -> None:
        self._path, self._tmp = path, tmp
        self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        self._keep_last = timed
        self._last: np.ndarray | None = None
        self._sent = 0
        self._size = -1
        """The file's size at the last check for room."""
        if not self._writer.isOpened():
            self._writer.release()
            tmp.unlink(missing_ok=True)
            raise SinkError(f"cannot write video {path}; check the folder is writable and the extension")

    def _send(self, image: np.ndarray) -> None:
        self._writer.write(image)  # reports no error: out of room, frames vanish without a word
        self._sent += 1
        if self._sent % _SPACE_CHECK_EVERY == 0:  # a stat; a probe write only when the file stopped growing
            code, self._size = _out_of_room(self._tmp, self._size)
            if code is not None:
                raise DiskFullError(self._path, code)

    def write(self, image: np.ndarray) -> None:
        self._send(image)
        if self._keep_last:
            self._last = image.copy()

    def repeat(self) -> None:
        """Write the last frame again."""
        assert self._last is not None, "repeat() needs timed=True and a frame written"
        self._send(self._last)

    def release(self) -> None:
        self._writer.release()
        code, _ = _out_of_room(self._tmp, None)  # the trailer (index) may not have fitted either
        if code is not None:
            raise DiskFullError(self._path, code, action="finish")


class _H264Writer:
    """H.264 (libx264, yuv420p) through PyAV; MP4/MOV with ``movflags=+faststart``.

    Per frame: OpenCV converts BGR to I420 into a reused array (about 0.2 ms at 768x576,
    several times cheaper than PyAV's own bgr24->yuv420p reformat), the planes are copied into
    one reused ``av.VideoFrame`` (``Plane.update``, a memcpy that keeps the GIL; libx264 copies
    its input, so the frame can be refilled once sent), then one ``encode`` and one ``mux``.
    PyAV still releases the GIL about 8 times per frame (sending, two receives, each packet's
    allocation and release, muxing): next to a thread that runs pure Python, each release may
    wait the 5 ms switch interval to get it back (42.8 ms per frame against mp4v's 9.9,
    ``benchmarks/encode.py``). In :func:`~detector.runner.run`, whose other threads mostly run
    C code, the video write measured 6.8 ms per frame for both codecs (README, Video codecs).

    Settings (:data:`X264_OPTIONS`): ``preset=ultrafast``, the cheapest libx264 preset (about
    3.0 ms wall, 4.6 ms CPU per 768x576 frame here, against mp4v's 3.8 and 3.7), gives a
    Constrained Baseline stream that every browser and phone plays; ``crf=23`` (x264's default
    quality) gives mp4v's file size at a higher PSNR on the real clip (38.9 against 37.4 dB).
    ``superfast`` would make files 40% smaller at the same PSNR but cost 1.7x the CPU, in the
    writer thread of a pipeline that shares 2 cores with the model. Threads: PyAV's default,
    libx264's sliced threads, as many as it picks for the machine, so no frame is held back.
    yuv420p needs an even width and height: an odd one is cropped by one pixel (the last
    column or row), as OpenCV's own writers do.
    """

    def __init__(self, av: ModuleType, path: Path, tmp: Path, fps: float, size: tuple[int, int]) -> None:
        self._path = path
        w, h = size[0] // 2 * 2, size[1] // 2 * 2
        if w == 0 or h == 0:
            raise ValueError(f"{size[0]}x{size[1]} is too small for yuv420p")
        self._crop = (w, h) != size
        self._w, self._h = w, h
        self._error = av.FFmpegError
        options = {"movflags": "+faststart"} if tmp.suffix.lower() in _FASTSTART else {}
        self._container = av.open(str(tmp), "w", container_options=options)
        try:
            self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
            self._stream.codec_context.options = dict(X264_OPTIONS)
            self._container.start_encoding()  # opens the encoder and the file now, so a failure shows here
        except BaseException:
            self._container.close()
            tmp.unlink(missing_ok=True)
            raise
        self._frame = av.VideoFrame(w, h, "yuv420p")
        self._i420 = np.empty((h * 3 // 2, w), np.uint8)
        flat = self._i420.reshape(-1)
        y, c = w * h, (w // 2) * (h // 2)
        self._copies: list[tuple[Any, np.ndarray, np.ndarray | None]] = []
        for plane, src in zip(self._frame.planes, (flat[:y], flat[y : y + c], flat[y + c :]), strict=True):
            padded = plane.line_size != plane.width  # rows padded for alignment: copy row by row
            view = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
            self._copies.append((plane, src.reshape(plane.height, plane.width) if padded else src,
                                 view if padded else None))  # fmt: skip
        self._pts = 0

    def write(self, image: np.ndarray) -> None:
        if self._crop:
            image = image[: self._h, : self._w]
        cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420, dst=self._i420)
        for plane, src, view in self._copies:
            if view is None:
                plane.update(src)
            else:
                np.copyto(view, src)
        self.repeat()

    def repeat(self) -> None:
        """Send the current frame (again) as the next one."""
        self._frame.pts = self._pts
        self._pts += 1
        try:
            self._container.mux(self._stream.encode(self._frame))
        except (self._error, OSError) as exc:
            code = _room_errno(exc)
            if code is not None:
                raise DiskFullError(self._path, code) from None
            raise SinkError(f"cannot write video {self._path}: {exc}") from None

    def release(self) -> None:
        try:
            try:
                self._container.mux(self._stream.encode(None))  # flush the frames libx264 still holds
            finally:
                self._container.close()  # the trailer (and the +faststart move); closes the file also on errors
        except (self._error, OSError) as exc:
            self._container.close()  # a no-op once closed
            code = _room_errno(exc)
            if code is not None:
                raise DiskFullError(self._path, code, action="finish") from None
            raise SinkError(f"cannot finish video {self._path}: {exc}") from None


class VideoFileSink(_PartialFileSink):
    """A video file at the input's size and (float) fps; codec by extension and ``codec``.

    ``.mp4``/``.m4v``/``.mov``/``.mkv``: H.264 through PyAV (see :class:`_H264Writer`) with
    ``codec="auto"`` (default) when PyAV with libx264 is installed and its encoder opens, else
    OpenCV's MPEG-4 part 2 (mp4v; XVID in ``.mkv``); ``codec="h264"`` raises a ``SinkError``
    instead of falling back; ``codec="mp4v"`` is always OpenCV. ``.avi``: OpenCV's MJPG.
    :attr:`codec` (``"h264"``, ``"mp4v"`` or ``"mjpg"``) and :attr:`codec_info` (one line
    for people, e.g. ``H.264 (libx264)``) say what is written.

    With ``timed=True`` (live sources) each frame is repeated to fill the time
    until the next one, by its ``timestamp``, so the recording plays for as
    long as the recording took, whatever the model's speed.
    """

    def __init__(
        self, path: str | Path, fps: float, size: tuple[int, int], *, timed: bool = False, codec: str = "auto"
    ) -> None:
        path = Path(path)
        check_video_codec(path, codec)
        if not fps > 0:
            raise SinkError(f"cannot write video {path} at {fps} frames/s; give a positive fps")
        self.path = path
        self.size = size
        self.fps = float(fps)
        self.timed = timed
        self.frames = 0
        """Frames written to the file (with ``timed``, repeats included)."""
        self._first_ts: float | None = None
        self._tmp = partial_path(path)
        self._writer: _H264Writer | _OpenCVWriter | None = None
        suffix = path.suffix.lower()
        note = ""
        if suffix in H264_SUFFIXES and codec != "mp4v":
            why = h264_unavailable()
            if why is None:
                try:
                    self._writer = _H264Writer(_import_av(), path, self._tmp, self.fps, size)
                except Exception as exc:  # any encoder failure falls back (auto) or is reported (h264)
                    code = _room_errno(exc)
                    if code is not None:  # no room for the header: OpenCV would fail without a word
                        raise DiskFullError(path, code, action="start") from None
                    if codec == "h264":
                        raise SinkError(
                            f"cannot write H.264 video {path}: the encoder failed ({exc}); use --codec mp4v"
                        ) from None
                    log.warning("H.264 encoder failed (%s); writing %s with OpenCV's MPEG-4 part 2", exc, path)
                    note = "; the H.264 encoder failed"
            else:
                note = "; install av for H.264" if why == "PyAV is not installed" else f"; {why}, pip install av"
        if self._writer is not None:
            self.codec, self.codec_info = "h264", "H.264 (libx264)"
        else:
            fourcc = VIDEO_FOURCC[suffix]
            self._writer = _OpenCVWriter(path, self._tmp, fourcc, self.fps, size, timed=timed)
            self.codec, name = _OPENCV_NAMES[fourcc]
            self.codec_info = f"{name} ({fourcc}{note})"
        self._has_last = False

    def write(self, frame: Frame | np.ndarray, detections: Detections | None = None) -> None:
        """Append a frame (already annotated by the pipeline). A ``Frame``'s timestamp drives
        ``timed`` recordings; a bare BGR array is written as the next frame."""
        timestamp = frame.timestamp if isinstance(frame, Frame) else None
        frame = frame.image if isinstance(frame, Frame) else frame
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            raise SinkError(f"frame {w}x{h} differs from the video's {self.size[0]}x{self.size[1]}")
        assert self._writer is not None
        if self.timed and timestamp is not None:
            if self._first_ts is None:
                self._first_ts = timestamp
            due = int(round((timestamp - self._first_ts) * self.fps))  # this frame's slot in the recording
            while self._has_last and self.frames < due:
                self._write(self._writer.repeat)
            self._has_last = True
        self._write(self._writer.write, frame)

    def _write(self, send: Any, *args: Any) -> None:
        if self._full is not None:
            raise self._full
        try:
            send(*args)
        except DiskFullError as exc:
            self._full = exc
            raise
        self.frames += 1

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()

    def _written(self) -> int:
        return self.frames

    def _salvage(self) -> int:
        """Decode what was written: out of room, an MP4 has no index (nothing plays) while MKV
        or AVI may still play the frames that made it to disk."""
        return min(count_decodable_frames(self._tmp), self.frames)

    def _kept_note(self, done: Path | None, kept: int) -> str:
        if done is None:
            return "no video was kept (its unfinished file did not decode and was removed)"
        if kept == 1:
            return f"the first frame is in {done}"
        return f"the first {kept} frames are in {done}"


class ImageSink(_Sink):
    """Annotated images: one file (``folder=False``) or one per input name in a folder.

    Names may hold sub-folders (images from several folders keep their relative
    paths). Each file is written to a temporary name and renamed into place.
    """

    def __init__(self, path: str | Path, *, folder: bool) -> None:
        path = Path(path)
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
            with open(tmp, "wb") as f:  # not ndarray.tofile: its short-write error carries no errno
                f.write(data.data)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            code = _room_errno(exc)
            if code is None:
                raise SinkError(f"cannot write {target} ({exc.strerror}); choose a writable --out path") from None
            full = DiskFullError(target, code)
            where = f"in {self.path}" if self.folder else "before"
            done = f"the {self.frames} images written before are {where}" if self.frames != 1 else f"1 image is {where}"
            note = done if self.frames else "no image was written"
            if target.exists():
                note += f" ({target} is left as it was)"
            full.kept.append(note)
            raise full from None
        self.frames += 1
        return target


def json_name(name: str) -> dict[str, str]:
    """A file name as JSON fields that strict UTF-8 readers accept, losslessly.

    Python hands a name that is not valid UTF-8 (e.g. the bytes ``b"\\xff.jpg"``) over with lone
    surrogates (``"\\udcff.jpg"``), which JSON can only write as an escape that is no Unicode
    text (``"\\udcff"``): strict readers (Rust's serde_json, Go, browsers) reject or mangle it.
    So ``image`` is always valid text: the name itself when it is valid UTF-8 (nearly always),
    else the name with each undecodable byte shown as U+FFFD (for people and logs); then
    ``image_bytes_b64`` holds the name's exact bytes (``os.fsencode``), base64, the form JSON
    carries bytes in, so ``open(base64.b64decode(record["image_bytes_b64"]))`` finds the file.
    """
    raw = os.fsencode(name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"image": raw.decode("utf-8", "replace"), "image_bytes_b64": base64.b64encode(raw).decode("ascii")}
    return {"image": text}


class JsonlSink(_PartialFileSink):
    """One JSON object per frame and line, written with one system call per line so a crash loses
    at most the line being written: ``{"frame", "time", ["image", ["image_bytes_b64",]]
    "detections"}``; ``time`` is the frame's own timestamp (seconds from the start of the video);
    ``image`` (the frame's name) when ``with_image`` (image inputs), with ``image_bytes_b64`` for
    a name that is not valid UTF-8 (see :func:`json_name`). The file is strict UTF-8 (ASCII).

    Out of room (see :class:`DiskFullError`), the file is cut back to its last whole line."""

    def __init__(self, path: str | Path, *, with_image: bool = False) -> None:
        path = Path(path)
        self.path = path
        self.with_image = with_image
        self.lines = 0
        self._size = 0
        """Bytes of whole lines written."""
        self._tmp = partial_path(path)
        try:
            self._file: IO[bytes] = self._tmp.open("wb", buffering=0)
        except OSError as exc:
            raise SinkError(f"cannot write {path} ({exc.strerror}); choose a writable --json path") from None

    def write(self, frame: Frame, detections: Detections) -> None:
        record: dict[str, Any] = {"frame": frame.index, "time": round(frame.timestamp, 6)}
        if self.with_image:
            record.update(json_name(frame.name))
        record["detections"] = detections.to_dict()
        self.write_record(record)

    def write_record(self, record: dict[str, Any]) -> None:
        """Append any JSON-serialisable object as one line."""
        if self._full is not None:
            raise self._full
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        data = memoryview(line)
        try:
            while data:
                data = data[os.write(self._file.fileno(), data) :]
        except OSError as exc:
            try:  # keep whole lines only (shrinking needs no room)
                os.ftruncate(self._file.fileno(), self._size)
            except OSError:
                pass
            code = _room_errno(exc)
            if code is None:
                raise SinkError(f"cannot write {self.path} ({exc.strerror})") from None
            self._full = DiskFullError(self.path, code)
            raise self._full from None
        self._size += len(line)
        self.lines += 1

    def _release(self) -> None:
        self._file.close()

    def _written(self) -> int:
        return self.lines

    def _kept_note(self, done: Path | None, kept: int) -> str:
        if done is None:
            return "no detections were kept"
        return f"the detections of {kept} frame{'s' if kept != 1 else ''} are in {done}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (e.g. stats) under a temporary name, then rename it into place."""
    tmp = partial_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        code = _room_errno(exc)
        if code is None:
            raise SinkError(f"cannot write {path} ({exc.strerror}); choose a writable path") from None
        full = DiskFullError(path, code)
        full.kept.append(f"it was not written{f' ({path} is left as it was)' if path.exists() else ''}")
        raise full from None
