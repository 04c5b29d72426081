"""Overlapped stages: decode (reader thread) -> detect (caller's thread) -> render + write
(writer thread), joined by bounded queues, with per-stage timings.

Every thread has a stop signal and is joined in ``finally``; an exception in
any stage (or Ctrl-C, which lands in the caller's thread) stops the others
promptly, and the error is re-raised to the caller. A source error (e.g. a
damaged video) first lets the frames decoded before it through. Queue waits poll the
stop signal, so a stage never hangs on a full or empty queue after another
one died.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from .io.sources import Frame
from .models import Detector
from .structures import Detections

POLL_S = 0.05
_DONE = object()
STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "write")


@dataclass
class Stats:
    """Per-stage durations (ms) and end-to-end figures of one run."""

    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    latency_ms: list[float] = field(default_factory=list)
    """Capture (live) or decode (files) to the end of writing, per frame: the age of what is shown."""
    frames: int = 0
    seconds: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage].append(seconds * 1000)

    def summary(self) -> dict[str, Any]:
        def describe(xs: list[float]) -> dict[str, float]:
            if not xs:
                return {"mean_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0}
            a = np.asarray(xs)
            return {"mean_ms": float(a.mean()), "p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95))}

        return {
            "frames": self.frames,
            "seconds": self.seconds,
            "fps": self.frames / self.seconds if self.seconds > 0 else 0.0,
            "latency": describe(self.latency_ms),
            "stages": {s: describe(v) for s, v in self.stages.items()},
        }

    def table(self) -> str:
        s = self.summary()
        rows = [f"{s['frames']} frames in {s['seconds']:.2f} s: {s['fps']:.2f} fps end to end",
                "stage          mean ms   p50 ms   p95 ms"]  # fmt: skip
        for name, d in [*s["stages"].items(), ("latency", s["latency"])]:
            rows.append(f"{name:12s} {d['mean_ms']:9.1f} {d['p50_ms']:8.1f} {d['p95_ms']:8.1f}")
        return "\n".join(rows)


class StopPipeline(Exception):
    """Raise from a stage (e.g. a window's q key) to end the run early without an error."""


class _Stop(Exception):
    """Raised inside a stage when another stage asked everyone to stop."""


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue


class _Worker(threading.Thread):
    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._stop_event = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except _Stop:
            pass
        except BaseException as exc:  # handed to the caller, which re-raises it
            self.error = exc
            self._stop_event.set()


def _reader(
    frames: Iterable[Frame],
    out: queue.Queue[Any],
    stop: threading.Event,
    source_errors: list[Exception],
    stats: Stats | None = None,
) -> _Worker:
    """A thread that decodes ``frames`` into ``out`` and ends it with ``_DONE``. A source error
    is kept in ``source_errors`` after the frames decoded before it, for the caller to raise."""

    def read() -> None:
        it = iter(frames)
        try:
            while True:
                t0 = time.perf_counter()
                frame = next(it, None)
                if frame is None:
                    break
                if stats is not None:
                    stats.add("decode", time.perf_counter() - t0)
                _put(out, frame, stop)
        except _Stop:
            raise
        except Exception as exc:  # a source error: let the frames already decoded through first
            source_errors.append(exc)
        _put(out, _DONE, stop)

    return _Worker("detector-read", read, stop)


def _drain(detected: queue.Queue[Any], writer: _Worker, stop: threading.Event, timeout: float = 10.0) -> None:
    """Let a healthy writer finish the frames already queued (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while writer.is_alive() and not stop.is_set() and time.monotonic() < deadline:
        try:
            detected.put(_DONE, timeout=POLL_S)
            break
        except queue.Full:
            continue
    writer.join(max(0.0, deadline - time.monotonic()))


def run_pipeline(
    frames: Iterable[Frame],
    detector: Detector,
    consume: Callable[[Frame, Detections], None],
    *,
    render: Callable[[Frame, Detections], None] | None = None,
    queue_size: int = 4,
    max_frames: int | None = None,
    stats: Stats | None = None,
) -> Stats:
    """Decode ``frames`` in a reader thread, detect here, and hand each result to
    ``render`` then ``consume`` in a writer thread, in order.

    A live source (``frames.live`` is true: it has its own capture thread that
    keeps only the newest frame) is read directly by the detecting thread, and
    results go to the writer through a one-slot queue, so nothing waits in a
    queue long enough to go stale.
    """
    live = bool(getattr(frames, "live", False))
    if live:
        queue_size = 1
    if max_frames is not None:
        frames = islice(frames, max_frames)
    stats = stats or Stats()
    stop = threading.Event()
    decoded: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    detected: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    source_errors: list[Exception] = []

    def write() -> None:
        while (item := _get(detected, stop)) is not _DONE:
            frame, dets = item
            if render is not None:
                t0 = time.perf_counter()
                render(frame, dets)
                stats.add("render", time.perf_counter() - t0)
            t0 = time.perf_counter()
            consume(frame, dets)
            t1 = time.perf_counter()
            stats.add("write", t1 - t0)
            stats.latency_ms.append((t1 - (frame.captured_at or t1)) * 1000)
            stats.frames += 1

    reader = None if live else _reader(frames, decoded, stop, source_errors, stats)
    writer = _Worker("detector-write", write, stop)
    live_frames = iter(frames) if live else None

    def next_frame() -> Any:
        if live_frames is None:
            return _get(decoded, stop)
        t0 = time.perf_counter()
        frame = next(live_frames, _DONE)
        stats.add("decode", time.perf_counter() - t0)  # waiting for a frame newer than the last one
        return frame

    begin = time.perf_counter()
    if reader is not None:
        reader.start()
    writer.start()
    try:
        while (frame := next_frame()) is not _DONE:
            t0 = time.perf_counter()
            tensors = detector.preprocess([frame.image])
            t1 = time.perf_counter()
            outputs = detector.forward(tensors)
            t2 = time.perf_counter()
            (dets,) = detector.postprocess(outputs)
            stats.add("preprocess", t1 - t0)
            stats.add("inference", t2 - t1)
            stats.add("postprocess", time.perf_counter() - t2)
            _put(detected, (frame, dets), stop)
        _put(detected, _DONE, stop)
        writer.join()  # let the writer drain what is queued
    except (_Stop, StopPipeline):
        pass
    except BaseException:
        _drain(detected, writer, stop)  # a model error or Ctrl-C: what was detected is still written
        raise
    finally:
        stop.set()
        if reader is not None:
            reader.join()
        writer.join()
        stats.seconds = time.perf_counter() - begin
    for error in (reader.error if reader else None, writer.error, *source_errors):
        if error is not None and not isinstance(error, StopPipeline):
            raise error
    return stats


def stream(frames: Iterable[Frame], detector: Detector, *, queue_size: int = 4) -> Iterator[tuple[Frame, Detections]]:
    """Yield ``(frame, detections)`` as they come, decoding ahead in a thread;
    nothing is accumulated. Stopping the iteration early stops the reader."""
    stop = threading.Event()
    decoded: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    source_errors: list[Exception] = []
    reader = _reader(frames, decoded, stop, source_errors)
    reader.start()
    try:
        while True:
            try:
                frame = _get(decoded, stop)
            except _Stop:
                break
            if frame is _DONE:
                break
            yield frame, detector(frame.image)
    finally:
        stop.set()
        reader.join()
    for error in (reader.error, *source_errors):
        if error is not None:
            raise error
