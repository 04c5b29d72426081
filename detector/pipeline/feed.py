"""Frames from a source into batches, the same way for the detect loop and for :class:`Stream`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from ..errors import StopPipeline
from ..io.types import Frame
from .defaults import check_counts
from .stats import Stats
from .sync import DONE, Stopped, Worker, get, put


class Feed:
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
        self.reader = None if self.live else Worker("detector-read", self._read_into_queue(frames), stop)

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
                    put(out, frame, stop)
            except Stopped:
                raise
            except Exception as exc:  # a source error: let the frames already decoded through first
                errors.append(exc)
            put(out, DONE, stop)

        return read

    def start(self) -> None:
        if self.reader is not None:
            self.reader.start()

    def next(self) -> Any:
        """The next frame, or ``DONE``; raises ``Stopped`` when stopped."""
        if self._direct is None:
            return get(self._queue, self._stop)
        t0 = time.perf_counter()
        try:
            frame = next(self._direct, DONE)
        except Exception as exc:  # a live source's error (e.g. the stream did not come back)
            self._errors.append(exc)
            return DONE
        if self._stats is not None:
            self._stats.add("decode", time.perf_counter() - t0)  # waiting for a frame newer than the last one
        return frame

    def next_batch(self) -> list[Frame]:
        """Up to ``batch_size`` frames of one image size (empty when done). A batch ends early at
        the end of the source and before a frame of another size (image folders), which starts
        the next batch: padded to a common size, results would differ from one at a time.
        A live source gives one frame at a time: its frames must not wait for others.
        Raises ``Stopped`` when stopped."""
        batch: list[Frame] = []
        if self._held is not None:
            batch.append(self._held)
            self._held = None
        while len(batch) < self.batch_size and not self._ended:
            frame = self.next()
            if frame is DONE:
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
