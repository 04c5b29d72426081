"""The detect loop: batches from the feed through the model, results to a writer thread, in order."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import StopPipeline
from ..io.types import Frame
from ..predictor import Detector
from ..structures import Detections
from .defaults import DEFAULT_DETECT_THREADS, check_counts, default_batch_size
from .feed import Feed
from .ordering import Failed, InOrder
from .stats import Stats
from .sync import DONE, POLL_S, Stopped, Worker, get, put


class DetectLoop:
    """One run: a reader thread decodes (:class:`~.feed.Feed`), ``detect_threads`` threads detect
    (this one and helpers), a writer thread renders and consumes, in frame order.

    ``consume(frame, detections)`` and ``render`` run in the writer thread; ``on_main_thread`` is
    called in the calling thread before each batch it detects (may raise ``StopPipeline``).
    """

    def __init__(
        self,
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
    ) -> None:
        check_counts(batch_size=batch_size, detect_threads=detect_threads)
        self.detector = detector
        self.consume = consume
        self.render = render
        self.on_main_thread = on_main_thread
        self.stats = stats or Stats()
        self.stop = threading.Event()
        self.feed = Feed(frames, self.stop, queue_size=queue_size, max_frames=max_frames, stats=self.stats,
                         batch_size=default_batch_size(detector) if batch_size is None else batch_size)  # fmt: skip
        self.threads = 1 if self.feed.live else DEFAULT_DETECT_THREADS if detect_threads is None else detect_threads
        self.detected: queue.Queue[Any] = queue.Queue(maxsize=1 if self.feed.live else self.feed.depth * self.threads)
        """Results waiting for the writer: one slot for a live source, so nothing goes stale there."""
        self.order = InOrder(self.threads, self.stop)

    # -- the stages -----------------------------------------------------------------------

    def _write(self) -> None:
        stats = self.stats
        while (item := get(self.detected, self.stop)) is not DONE:
            frame, dets = item
            if self.render is not None:
                t0 = time.perf_counter()
                self.render(frame, dets)
                stats.add("render", time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.consume(frame, dets)
            t1 = time.perf_counter()
            stats.add("write", t1 - t0)
            stats.latency_ms.append((t1 - (frame.captured_at or t1)) * 1000)
            stats.frames += 1

    def _detect(self, batch: list[Frame]) -> list[Detections]:
        t0 = time.perf_counter()
        tensors = self.detector.preprocess([frame.image for frame in batch])
        t1 = time.perf_counter()
        outputs = self.detector.forward(tensors)
        t2 = time.perf_counter()
        results = self.detector.postprocess(outputs)
        t3 = time.perf_counter()
        n = len(batch)  # stage times are per frame: a batch's time is shared by its frames
        for _ in batch:
            self.stats.add("preprocess", (t1 - t0) / n)
            self.stats.add("inference", (t2 - t1) / n)
            self.stats.add("postprocess", (t3 - t2) / n)
        return results

    def _detect_loop(self, main: bool) -> None:
        order = self.order
        with _own_cuda_stream(self.detector, enabled=self.threads > 1):
            while not order.failed.is_set():
                if main and self.on_main_thread is not None:  # e.g. a GUI's event pump: toolkits want the main thread
                    self.on_main_thread()
                with order.taking():
                    batch, turn = self.feed.next_batch(), order.ticket()
                if not batch:
                    return
                if order.dropped(turn):  # a batch before it failed (or Ctrl-C): not worth detecting
                    raise Failed
                try:
                    results = self._detect(batch)
                except BaseException as exc:
                    order.fail(turn, exc)  # earlier batches are still handed on, later ones not
                    raise
                with order.turn(turn):
                    for frame, dets in zip(batch, results, strict=True):
                        put(self.detected, (frame, dets), self.stop)

    def _helper_loop(self) -> None:
        try:
            self._detect_loop(False)
        except Stopped:  # another stage stopped everyone: its error is the one to raise
            raise
        except BaseException as exc:
            if not self.order.failed.is_set():  # not the model (recorded with its batch): stop here
                self.order.fail(None, exc)
            raise

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Stats:
        """Run to the end of the source (or a stop); re-raises the first error of any stage."""
        order, feed, stats = self.order, self.feed, self.stats
        # an error in a helper sets order.failed, not stop: this thread then raises it, and the batches
        # before the failed one are still written, as when the model fails in this thread
        helpers = [Worker(f"detector-detect-{i}", self._helper_loop, order.failed) for i in range(1, self.threads)]
        writer = Worker("detector-write", self._write, self.stop)
        begin = time.perf_counter()
        feed.start()
        writer.start()
        try:
            for helper in helpers:
                helper.start()
            self._detect_loop(True)
            for helper in helpers:
                helper.join()
            if order.error is not None:  # a helper's model error
                raise order.error
            put(self.detected, DONE, self.stop)
            writer.join()  # let the writer drain what is queued
        except (Stopped, StopPipeline):
            pass
        except BaseException as exc:
            if not order.failed.is_set():  # Ctrl-C, say (a model error was recorded with its batch)
                order.fail(None)  # the other detecting threads hand on nothing new
            for helper in helpers:
                helper.join()
            _drain(self.detected, writer, self.stop)  # a model error or Ctrl-C: what was detected is still written
            if order.error is not None and not isinstance(exc, KeyboardInterrupt):
                raise order.error from None  # the error of the first batch that failed, in whichever thread
            if not isinstance(exc, Failed):  # (Failed without an error: another stage stopped; raised below)
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
    """Decode ``frames`` in a reader thread, detect here, and hand each result to ``render`` then
    ``consume`` in a writer thread, in order (a :class:`DetectLoop`, run once).

    ``batch_size`` frames (default :func:`~.defaults.default_batch_size`) go through the model
    together (the last batch may be smaller); results still come out one frame at a time, in order.
    A batch holds frames of this one source only, and a live source is always detected one newest
    frame at a time.

    ``detect_threads`` batches (default :data:`~.defaults.DEFAULT_DETECT_THREADS`: 1) are detected
    at once: this thread and ``detect_threads - 1`` more, each on a CUDA stream of its own, so one
    batch's GPU work runs while another's Python-side steps (torchvision's per-image proposal
    filtering and NMS, which wait for the GPU) run on the CPU. Results are handed on in frame
    order all the same; a model error in any of them still lets every batch before the failed
    one through.

    A live source (``frames.live`` is true: it has its own capture thread that keeps only the
    newest frame) is read directly by the detecting thread, and results go to the writer through
    a one-slot queue, so nothing waits in a queue long enough to go stale.
    """
    loop = DetectLoop(frames, detector, consume, render=render, queue_size=queue_size, max_frames=max_frames,
                      stats=stats, on_main_thread=on_main_thread, batch_size=batch_size,
                      detect_threads=detect_threads)  # fmt: skip
    return loop.run()


def _drain(detected: queue.Queue[Any], writer: Worker, stop: threading.Event, timeout: float = 10.0) -> None:
    """Let a healthy writer finish the frames already queued (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while writer.is_alive() and not stop.is_set() and time.monotonic() < deadline:
        try:
            detected.put(DONE, timeout=POLL_S)
            break
        except queue.Full:
            continue
    writer.join(max(0.0, deadline - time.monotonic()))


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
