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

import collections
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StopPipeline
from .io.sources import open_source
from .io.types import Frame
from .models import Detector
from .structures import Detections

log = logging.getLogger(__name__)
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


def check_counts(**counts: int | None) -> None:
    """Raise ``ValueError`` for a count given below 1 (``batch_size``, ``detect_threads``)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


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
    """A stage's thread: an exception other than ``_Stop`` is kept in ``error`` and sets ``stop``."""

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


class _Feed:
    """Frames from a source, the same way for :func:`run_pipeline` and :class:`Stream`.

    Files, folders and other iterables are decoded ahead by a reader thread into a
    bounded queue; a live source (``frames.live`` true: its own capture thread keeps
    only the newest frame) is read directly, so no frame waits in a queue and goes
    stale. A source error is raised by :meth:`raise_errors` after the frames
    decoded before it were handed out.
    """

    def __init__(self, frames: Iterable[Frame], stop: threading.Event, *, queue_size: int = 4,
                 max_frames: int | None = None, stats: Stats | None = None, batch_size: int = 1) -> None:  # fmt: skip
        check_counts(batch_size=batch_size)
        self.live = bool(getattr(frames, "live", False))
        self.batch_size = 1 if self.live else batch_size
        self.depth = max(queue_size, 2 * batch_size)
        """Frames the reader may decode ahead: enough to fill the next batch while this one runs."""
        if max_frames is not None:
            frames = islice(frames, max_frames)
        self._stop = stop
        self._stats = stats
        self._errors: list[Exception] = []
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        self._direct: Iterator[Frame] | None = iter(frames) if self.live else None
        self._ended = False
        self._held: Frame | None = None
        self.reader = None if self.live else _Worker("detector-read", self._read_into_queue(frames), stop)

    def _read_into_queue(self, frames: Iterable[Frame]) -> Callable[[], None]:
        out, stop, stats, errors = self._queue, self._stop, self._stats, self._errors

        def read() -> None:  # references no Feed or Stream object: dropping those ends the thread
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
                errors.append(exc)
            _put(out, _DONE, stop)

        return read

    def start(self) -> None:
        if self.reader is not None:
            self.reader.start()

    def next(self) -> Any:
        """The next frame, or ``_DONE``; raises ``_Stop`` when stopped."""
        if self._direct is None:
            return _get(self._queue, self._stop)
        t0 = time.perf_counter()
        try:
            frame = next(self._direct, _DONE)
        except Exception as exc:  # a live source's error (e.g. the stream did not come back)
            self._errors.append(exc)
            return _DONE
        if self._stats is not None:
            self._stats.add("decode", time.perf_counter() - t0)  # waiting for a frame newer than the last one
        return frame

    def next_batch(self) -> list[Frame]:
        """Up to ``batch_size`` frames of one image size (empty when done). A batch ends early at
        the end of the source and before a frame of another size (image folders), which starts
        the next batch: padded to a common size, results would differ from one at a time.
        A live source gives one frame at a time: its frames must not wait for others.
        Raises ``_Stop`` when stopped."""
        batch: list[Frame] = []
        if self._held is not None:
            batch.append(self._held)
            self._held = None
        while len(batch) < self.batch_size and not self._ended:
            frame = self.next()
            if frame is _DONE:
                self._ended = True
            elif batch and frame.image.shape[:2] != batch[0].image.shape[:2]:
                self._held = frame
                break
            else:
                batch.append(frame)
        return batch

    def close(self) -> None:
        """Stop and join the reader: afterwards nothing reads the source any more."""
        self._stop.set()
        if self.reader is not None and self.reader.is_alive():
            self.reader.join()

    def raise_errors(self) -> None:
        for error in (self.reader.error if self.reader else None, *self._errors):
            if error is not None and not isinstance(error, StopPipeline):
                raise error


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
    on_main_thread: Callable[[], None] | None = None,
    batch_size: int | None = None,
    detect_threads: int | None = None,
) -> Stats:
    """Decode ``frames`` in a reader thread, detect here, and hand each result to
    ``render`` then ``consume`` in a writer thread, in order. ``on_main_thread`` is
    called in the calling thread before each batch it detects (may raise ``StopPipeline``).

    ``batch_size`` frames (default :func:`default_batch_size`) go through the model together
    (the last batch may be smaller); results still come out one frame at a time, in order. A
    batch holds frames of this one source only, and a live source is always detected one newest
    frame at a time.

    ``detect_threads`` batches (default :data:`DEFAULT_DETECT_THREADS`: 1) are detected at once:
    this thread and ``detect_threads - 1`` more, each on a CUDA stream of its own, so one
    batch's GPU work runs while another's Python-side steps (torchvision's per-image
    proposal filtering and NMS, which wait for the GPU) run on the CPU. Results are handed on
    in frame order all the same; a model error in any of them still lets every batch before
    the failed one through.

    A live source (``frames.live`` is true: it has its own capture thread that
    keeps only the newest frame) is read directly by the detecting thread, and
    results go to the writer through a one-slot queue, so nothing waits in a
    queue long enough to go stale.
    """
    stats = stats or Stats()
    stop = threading.Event()
    feed = _Feed(frames, stop, queue_size=queue_size, max_frames=max_frames, stats=stats,
                 batch_size=default_batch_size(detector) if batch_size is None else batch_size)  # fmt: skip
    check_counts(detect_threads=detect_threads)
    threads = 1 if feed.live else DEFAULT_DETECT_THREADS if detect_threads is None else detect_threads
    detected: queue.Queue[Any] = queue.Queue(maxsize=1 if feed.live else feed.depth * threads)

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

    def detect(batch: list[Frame]) -> list[Detections]:
        t0 = time.perf_counter()
        tensors = detector.preprocess([frame.image for frame in batch])
        t1 = time.perf_counter()
        outputs = detector.forward(tensors)
        t2 = time.perf_counter()
        results = detector.postprocess(outputs)
        t3 = time.perf_counter()
        n = len(batch)  # stage times are per frame: a batch's time is shared by its frames
        for _ in batch:
            stats.add("preprocess", (t1 - t0) / n)
            stats.add("inference", (t2 - t1) / n)
            stats.add("postprocess", (t3 - t2) / n)
        return results

    order = _InOrder(threads, stop)

    def detect_loop(main: bool) -> None:
        with _own_cuda_stream(detector, enabled=threads > 1):
            while not order.failed.is_set():
                if main and on_main_thread is not None:  # e.g. a GUI window's event pump: toolkits want the main thread
                    on_main_thread()
                with order.taking():
                    batch, turn = feed.next_batch(), order.ticket()
                if not batch:
                    return
                if order.dropped(turn):  # a batch before it failed (or Ctrl-C): not worth detecting
                    raise _Failed
                try:
                    results = detect(batch)
                except BaseException as exc:
                    order.fail(turn, exc)  # earlier batches are still handed on, later ones not
                    raise
                with order.turn(turn):
                    for frame, dets in zip(batch, results, strict=True):
                        _put(detected, (frame, dets), stop)

    def helper_loop() -> None:
        try:
            detect_loop(False)
        except _Stop:  # another stage stopped everyone: its error is the one to raise
            raise
        except BaseException as exc:
            if not order.failed.is_set():  # not the model (that was recorded with its batch): stop here
                order.fail(None, exc)
            raise

    # an error in a helper sets order.failed, not stop: this thread then raises it, and the batches
    # before the failed one are still written, as when the model fails in this thread
    helpers = [_Worker(f"detector-detect-{i}", helper_loop, order.failed) for i in range(1, threads)]
    writer = _Worker("detector-write", write, stop)
    begin = time.perf_counter()
    feed.start()
    writer.start()
    try:
        for helper in helpers:
            helper.start()
        detect_loop(True)
        for helper in helpers:
            helper.join()
        if order.error is not None:  # a helper's model error
            raise order.error
        _put(detected, _DONE, stop)
        writer.join()  # let the writer drain what is queued
    except (_Stop, StopPipeline):
        pass
    except BaseException as exc:
        if not order.failed.is_set():  # Ctrl-C, say (a model error was recorded with its batch)
            order.fail(None)  # the other detecting threads hand on nothing new
        for helper in helpers:
            helper.join()
        _drain(detected, writer, stop)  # a model error or Ctrl-C: what was detected is still written
        if order.error is not None and not isinstance(exc, KeyboardInterrupt):
            raise order.error from None  # the error of the first batch that failed, in whichever thread
        if not isinstance(exc, _Failed):  # (_Failed without an error: another stage stopped; raised below)
            raise
    finally:
        feed.close()
        for helper in helpers:
            helper.join()
        writer.join()
        stats.seconds = time.perf_counter() - begin
    if writer.error is not None and not isinstance(writer.error, StopPipeline):
        raise writer.error
    feed.raise_errors()
    return stats


class _InOrder:
    """Detecting threads take batches in turn and hand results on in the same order."""

    def __init__(self, threads: int, stop: threading.Event) -> None:
        self._take = threading.Lock() if threads > 1 else contextlib.nullcontext()
        self._cond = threading.Condition()
        self._issued = 0
        self._next = 0
        self._stop = stop
        self._failed_at = float("inf")
        self.failed = threading.Event()
        """Set by :meth:`fail`: no thread takes a new batch."""
        self.error: BaseException | None = None
        """The error of the earliest batch that failed (by frame order, not by time)."""

    def taking(self) -> contextlib.AbstractContextManager[Any]:
        return self._take

    def ticket(self) -> int:
        self._issued += 1
        return self._issued - 1

    def fail(self, ticket: int | None, error: BaseException | None = None) -> None:
        """Batch ``ticket`` failed with ``error``: those before it are still handed on, none after
        it. ``None``: the calling thread stops (Ctrl-C, an error): nothing not handed on yet is."""
        with self._cond:
            at = self._next - 1 if ticket is None else ticket
            if error is not None and at < self._failed_at:
                self.error = error
            self._failed_at = min(self._failed_at, at)
            self.failed.set()
            self._cond.notify_all()

    def dropped(self, ticket: int) -> bool:
        return ticket > self._failed_at

    @contextlib.contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        """Wait until every earlier batch was handed on, then hold the turn while this one is."""
        with self._cond:
            while True:
                if self._stop.is_set():
                    raise _Stop
                if ticket > self._failed_at:
                    raise _Failed
                if self._next == ticket:
                    break
                self._cond.wait(POLL_S)
        try:
            yield
        finally:
            with self._cond:
                self._next += 1
                self._cond.notify_all()


class _Failed(Exception):
    """Another detecting thread failed: this one stops without handing on more results."""


@contextlib.contextmanager
def _own_cuda_stream(detector: Detector, *, enabled: bool) -> Iterator[None]:
    """Run this thread's CUDA work on a stream of its own (thread-local), so that detecting
    threads overlap on the GPU; a no-op on the CPU."""
    if not enabled or detector.device.type != "cuda":
        yield
        return
    import torch

    with torch.cuda.stream(torch.cuda.Stream(detector.device)):
        yield


class OffThreadSink:
    """Runs sinks' ``write`` in a thread of their own, in order, behind a bounded queue.

    For file sinks whose work is mostly C code that releases the GIL -- video and image
    encoding -- so it runs on another core while the pipeline's writer thread goes on with
    the next frame. Each frame goes to ``sinks`` in the order given (media first, then
    JSON Lines: a line is written only once its frame was), and a frame handed over must not
    change afterwards (the pipeline never reuses one). An error in the thread is raised by
    the next ``write`` or by ``close``; ``close`` first writes what is queued (frames already
    detected are never dropped), then joins the thread. It does not close the sinks: their
    owner does, after this.
    """

    def __init__(self, *sinks: Any, depth: int = 8, name: str = "detector-encode", copy: bool = False) -> None:
        self.sinks = sinks
        self.copy = copy
        """Queue a copy of each frame's image: for when other sinks may still draw on it."""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def _loop(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is not None:
                continue  # drain without writing after a failure, so put() never blocks for ever
            try:
                for sink in self.sinks:
                    sink.write(*item)
            except BaseException as exc:
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True  # once; the thread keeps skipping writes after a failure
            raise self._error

    def write(self, frame: Frame, detections: Detections) -> None:
        if self.copy:
            frame = dataclasses.replace(frame, image=frame.image.copy())
        while True:
            self._raise()
            try:
                self._queue.put((frame, detections), timeout=POLL_S)
                return
            except queue.Full:
                continue

    def close(self, *, report: bool = True) -> None:
        """Write what is queued, then join the thread. ``report=False`` (the run is already
        ending on an error or a stop signal) keeps a write error to the log instead of raising it."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_DONE)  # the thread takes items until this one, so this never blocks for long
        try:
            self._thread.join()
        except BaseException:  # a stop signal while waiting: the files must not close under the thread
            self._thread.join()  # at most ``depth`` frames
            raise
        if report:
            self._raise()
        elif self._error is not None and not self._reported:
            log.warning("writing the output failed while the run was stopping: %s", self._error)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(report=exc_type is None)


DEFAULT_DETECT_THREADS = 1
"""Batches detected at once when none is given, on any device. On an H100, torchvision's
Faster R-CNN leaves the GPU idle half of the time while Python filters proposals and waits for
results (``benchmarks/gpu.py --profile``), and 2 threads gained 3-28% end to end for the Faster
R-CNNs but lost 14% for RetinaNet (the GIL is shared with decoding and drawing), so more is
opt-in; on the CPU the cores are busy anyway."""


def default_batch_size(detector: Detector) -> int:
    """Frames per forward pass when none is given: 1 on the CPU, where a batch is no faster
    per frame and only adds latency; 8 on CUDA, measured on an H100 with ``benchmarks/gpu.py``
    (Faster R-CNN fp16 at min_size 800: batch 1 ~55-59, 4 ~114, 8 ~122-177, 16 ~158-174 frames/s
    model only; 16 doubles the latency for little more)."""
    return 8 if detector.device.type == "cuda" else 1


class Stream:
    """``(frame, detections)`` pairs as they come, for embedding; nothing is accumulated.

    Iterate it directly or use it as a context manager. Files are decoded ahead in
    a reader thread; a live source is read directly, so every result is for the
    newest frame (the same :class:`_Feed` as :func:`run_pipeline`). Leaving the
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
            self._feed = _Feed(frames, self._stop, queue_size=queue_size, max_frames=max_frames, batch_size=size)
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
        except _Stop:
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


def stream(detector: Detector, source: str | Path | Iterable[Frame], *, queue_size: int = 4,
           max_frames: int | None = None, batch_size: int | None = None) -> Stream:  # fmt: skip
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
    """
    check_arguments("stream", detector, source)
    return Stream(source, detector, queue_size=queue_size, max_frames=max_frames, batch_size=batch_size)
