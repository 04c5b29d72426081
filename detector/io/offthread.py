"""Sinks written in a thread of their own: encoding runs on another core while the pipeline goes on."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from typing import Any

from ..structures import Detections
from .types import Frame

log = logging.getLogger(__name__)
POLL_S = 0.05
_DONE = object()


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

    def __enter__(self) -> OffThreadSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(report=exc_type is None)
