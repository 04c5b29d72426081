"""``stream()``: (frame, detections) pairs one by one, for embedding; nothing accumulated."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..io.sources import open_source
from ..io.types import Frame
from ..predictor import Detector
from ..structures import Detections
from .defaults import default_batch_size
from .feed import Feed
from .sync import Stopped

if TYPE_CHECKING:
    from .multi import MultiStream


class Stream:
    """``(frame, detections)`` pairs as they come, for embedding; nothing is accumulated.

    Iterate it directly or use it as a context manager. Files are decoded ahead in
    a reader thread; a live source is read directly, so every result is for the
    newest frame (the same :class:`~.feed.Feed` as :func:`run_pipeline`). Leaving the
    ``with``, ``close()``, or dropping the object stops and joins the reader, and
    the reader is always joined before this returns from ``close()``, so the
    source can then be closed safely.
    """

    def __init__(self, frames: str | Path | Iterable[Frame], detector: Detector, *, queue_size: int = 4,
                 max_frames: int | None = None, batch_size: int | None = None) -> None:  # fmt: skip
        self.detector = detector
        self._owned: Any = None
        """A source this stream opened from a path, closed with it."""
        if isinstance(frames, (str, Path)):
            frames = self._owned = open_source(frames)
        self._stop = threading.Event()
        try:
            size = default_batch_size(detector) if batch_size is None else batch_size
            self._feed = Feed(frames, self._stop, queue_size=queue_size, max_frames=max_frames, batch_size=size)
        except BaseException:
            if self._owned is not None:
                self._owned.close()
            raise
        self.batch_size = self._feed.batch_size
        self._ready: collections.deque[tuple[Frame, Detections]] = collections.deque()
        self._started = self._closed = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> tuple[Frame, Detections]:
        if self._closed:
            raise StopIteration
        if self._ready:
            return self._ready.popleft()
        if not self._started:
            self._started = True
            self._feed.start()
        try:
            batch = self._feed.next_batch()
        except Stopped:
            batch = []
        if not batch:
            self.close()
            self._feed.raise_errors()
            raise StopIteration
        results = self.detector([frame.image for frame in batch])
        self._ready.extend(zip(batch, results, strict=True))
        return self._ready.popleft()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._feed.close()
            finally:
                if self._owned is not None:
                    self._owned.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit, when modules are half gone
            self.close()


def check_arguments(function: str, detector: object, source: object) -> None:
    """``run`` and ``stream`` both take ``(detector, source)``: a clear ``TypeError`` when swapped or
    when the detector is something else (a bare callable, a model), instead of an AttributeError later."""
    if isinstance(detector, Detector):
        return
    if isinstance(source, Detector):
        raise TypeError(f"{function}() takes (detector, source), in that order; swap the two arguments")
    raise TypeError(
        f"{function}() takes a detector.Detector first (detector.load(...) or Detector(model)), "
        f"not {type(detector).__name__}"
    )


def several_sources(source: object) -> bool:
    """A dict of names to sources, or a list or tuple of specs (paths, URLs, camera indices): the
    several-source forms of ``run`` and ``stream`` (a list of frames is one source). An empty one is
    refused here, in one line, rather than read as one source."""
    if isinstance(source, Mapping):
        several = True
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        several = all(isinstance(s, (str, Path, int)) and not isinstance(s, bool) for s in source)
    else:
        return False
    if several and len(source) == 0:  # type: ignore[arg-type]
        raise ValueError("no sources given: pass at least one path, URL or camera index")
    return several


def named_sources(sources: Mapping[str, Any] | Sequence[str | Path | int]) -> dict[str, Any]:
    """Several sources by name, named as the command line names them (``name=spec`` or the spec's
    file stem, ``camera0``, or a stream's host, port and path, never its password or query), so
    ``stream`` and ``run`` give a list the same names; names are checked (distinct, usable as file names)."""
    from .names import SourceEntry, check_names, parse_entry

    if isinstance(sources, Mapping):
        entries = [SourceEntry(str(name), str(spec), given=True) for name, spec in sources.items()]
        check_names(entries)
        return dict(sources)
    entries = [parse_entry(str(spec), where="source") for spec in sources]
    check_names(entries)
    return {e.name: (spec if not isinstance(spec, str) else e.spec) for e, spec in zip(entries, sources, strict=True)}


@overload
def stream(  # type: ignore[overload-overlap]  # a str is a Sequence too: this one wins
    detector: Detector, source: str | Path | Iterable[Frame], *, queue_size: int = 4,
    max_frames: int | None = None, batch_size: int | None = None,
) -> Stream: ...  # fmt: skip


@overload
def stream(
    detector: Detector, source: Sequence[str | Path | int] | Mapping[str, Any], *, queue_size: int = 4,
    max_frames: int | None = None, batch_size: int | None = None,
) -> MultiStream: ...  # fmt: skip


def stream(detector: Detector, source: Any, *, queue_size: int = 4, max_frames: int | None = None,
           batch_size: int | None = None) -> Stream | MultiStream:  # fmt: skip
    """Yield ``(frame, detections)`` as they come (see :class:`Stream`)::

    with stream(detector, "clip.mp4", max_frames=50) as results:
        for frame, dets in results:
            ...

    ``source`` is what ``open_source`` takes (a path, URL or camera index as a string; opened
    here and closed with the stream), an opened source (yours to close), or any iterable of
    :class:`~detector.io.types.Frame`. The order of the arguments is :func:`detector.run`'s.

    ``batch_size`` frames go through the model together (files and folders; a live
    source is always one newest frame at a time); pairs still come one by one, in order.
    Default: :func:`default_batch_size` (1 on the CPU, 8 on CUDA).

    Several sources (a list of specs, or a dict of names to specs) give a
    :class:`~detector.pipeline.multi.MultiStream` of ``(name, frame, detections)`` instead, batched across
    sources (see :func:`~detector.pipeline.multi.multi_stream`; ``max_frames`` and ``batch_size`` are
    for one source)::

        with stream(detector, {"door": "rtsp://cam1/s", "yard": "rtsp://cam2/s"}) as results:
            for name, frame, dets in results:
                ...
    """
    check_arguments("stream", detector, source)
    if several_sources(source):
        from .multi import multi_stream

        if max_frames is not None or batch_size is not None:
            raise TypeError("stream() over several sources takes no max_frames or batch_size (stop iterating "
                            "when you have enough; frames are batched across sources)")  # fmt: skip
        return multi_stream(detector, named_sources(source))
    return Stream(source, detector, queue_size=queue_size, max_frames=max_frames, batch_size=batch_size)
