"""Drawing in worker processes: the host side of a fast run keeps up with the model.

At hundreds of frames per second a frame has a few milliseconds of host time, and drawing boxes,
labels and the status line is Python holding the GIL (3-4 ms per frame with many boxes), the same
GIL the detect loop needs to launch the model. :class:`RenderPool` draws in ``procs`` worker
processes instead and writes the drawn frames to the file sinks in frame order from a thread of its
own (video encoding is C code that releases the GIL, as in :class:`~.offthread.OffThreadSink`).

Frames travel through shared memory: ``write`` copies the image into a free slot of a memory-mapped
file (the only copy), a worker draws on the slot in place, and the writer thread hands a view of the
slot to the sinks, then frees it. ``write`` waits while every slot is in use (back-pressure, as a
bounded queue). A frame larger than a slot (a folder of images of mixed sizes) is drawn in the
calling thread instead, in its place in the order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SinkError
from ..structures import Detections
from .types import Frame

log = logging.getLogger(__name__)
POLL_S = 0.05
DEFAULT_SLOT_BYTES = 1920 * 1080 * 3
"""Slot size when the frames' size is not known beforehand (a folder of images): a 1080p BGR frame."""


@dataclasses.dataclass(frozen=True)
class HudLine:
    """What the status line of one frame says: drawn by a worker with the caller's figures."""

    model: str
    fps: float
    latency_ms: float


def _draw(image: np.ndarray, detections: Detections, index: int, hud: HudLine | None) -> None:
    from ..render import annotate
    from ..render.hud import Hud

    annotate(image, detections, copy=False)
    if hud is not None:
        Hud(hud.model, fps=hud.fps).draw(image, index, hud.latency_ms)


def _worker(tasks: Any, done: Any) -> None:
    """A worker process: draw on the slots it is handed until it gets None (or its parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a stop is the parent's to handle: it closes the pool
    parent = mp.parent_process()
    view: mmap.mmap | None = None
    mapped = ("", 0)
    try:
        while True:
            try:
                payload = tasks.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # the parent was killed: nobody will close the pool
                continue
            if payload is None:
                return
            slot, path, offset, size, shape, detections, index, hud = pickle.loads(payload)
            try:
                if view is None or mapped != (path, size):
                    if view is not None:
                        view.close()
                    with open(path, "r+b") as f:
                        view = mmap.mmap(f.fileno(), size)
                    mapped = (path, size)
                image = np.ndarray(shape, np.uint8, buffer=view, offset=offset)
                _draw(image, detections, index, hud)
                del image
                done.put((slot, None))
            except BaseException as exc:  # reported to the parent, which ends the run with it
                done.put((slot, f"{type(exc).__name__}: {exc}"))
                if not isinstance(exc, Exception):
                    raise
    finally:
        if view is not None:
            view.close()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start spawned workers without importing the caller's ``__main__`` in them (``spawn`` runs a
    script's top level again unless it is guarded by ``if __name__ == "__main__"``; the workers need
    nothing of it: their code is this module's)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


@dataclasses.dataclass
class _Pending:
    frame: Frame
    detections: Detections
    slot: int | None
    """None: drawn in the caller's thread (too large for a slot)."""
    drawn: bool = False


class RenderPool:
    """A sink: draws each frame's detections (and with ``hud`` the status line) in one of ``procs``
    worker processes, then writes it to ``sinks`` in frame order from a thread of its own.

    ``hud``: the model name for the status line (fps measured here, at ``write``), or None for no
    status line. ``slots``: frames in flight (default ``2 * procs + 2``). ``frame_bytes``: the
    size of one frame when known (a video's), else slots hold a 1080p frame or the first frame,
    whichever is larger. Like :class:`~.offthread.OffThreadSink` it does not close ``sinks`` (their
    owner does, after this); an error of a worker or a sink is raised by the next ``write`` or by
    ``close``, and every ``write`` after it raises too; ``close`` first writes every frame handed
    over, then stops the workers. A frame handed over is not changed (its image is copied into a slot).
    """

    def __init__(self, *sinks: Any, procs: int, hud: str | None = None, slots: int | None = None,
                 frame_bytes: int | None = None) -> None:  # fmt: skip
        if procs < 1:
            raise ValueError(f"a render pool needs at least one process, got {procs}")
        self.sinks = sinks
        self.procs = procs
        self.slots = slots or 2 * procs + 2
        self.hud = hud
        self._frame_bytes = frame_bytes
        self._status: Any = None
        if hud is not None:
            from ..render.hud import Hud

            self._status = Hud(hud)
        self.path: Path | None = None
        self._map: mmap.mmap | None = None
        self._slot_bytes = 0
        self._free: deque[int] = deque(range(self.slots))
        self._pending: deque[_Pending] = deque()
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._reported = False
        self._closing = False
        self._abort = False
        self._stopping = False
        self._closed = False
        ctx = mp.get_context("spawn")  # not fork: the caller runs threads (and maybe CUDA)
        self._tasks = ctx.Queue()
        self._done = ctx.Queue()
        self._workers = [ctx.Process(target=_worker, args=(self._tasks, self._done), name=f"detector-render-{i}",
                                     daemon=True) for i in range(procs)]  # fmt: skip
        self._thread = threading.Thread(target=self._loop, name="detector-render-writer", daemon=True)
        try:
            with _main_module_hidden():
                for worker in self._workers:
                    worker.start()
            self._thread.start()
        except BaseException:
            self._stop_workers()
            raise

    # -- the caller's side ----------------------------------------------------------------

    def _raise(self) -> None:
        if self._error is not None:
            if self._reported:  # raised once already: the pool is stopped, say so again
                raise SinkError(f"the render pool stopped after an error: {self._error}")
            self._reported = True
            raise self._error
        if not self._thread.is_alive():
            raise SinkError("the render pool is closed")

    def _allocate(self, nbytes: int) -> None:
        """The slots, sized by ``frame_bytes`` or the first frame: in /dev/shm (memory), else, or when it
        has no room (a container's 64 MB), in the temporary folder (the page cache)."""
        self._slot_bytes = max(nbytes, self._frame_bytes or DEFAULT_SLOT_BYTES, 1)
        total = self._slot_bytes * self.slots
        shm = Path("/dev/shm")
        for folder in ([str(shm)] if shm.is_dir() else []) + [None]:
            fd, name = tempfile.mkstemp(prefix="detector-render-", dir=folder)
            try:
                try:  # reserved now: a sparse file in a full /dev/shm would kill the process at first touch
                    os.posix_fallocate(fd, 0, total)
                except AttributeError:  # no posix_fallocate (macOS): a plain size
                    os.ftruncate(fd, total)
                self._map = mmap.mmap(fd, total)
            except OSError as exc:
                os.close(fd)
                os.unlink(name)
                if folder is None:
                    raise SinkError(f"cannot reserve {total >> 20} MB for the render pool's frames ({exc.strerror});"
                                    " free some memory or run without --render-procs") from None  # fmt: skip
                continue
            os.close(fd)
            self.path = Path(name)
            return

    def _slot_for(self, nbytes: int) -> int | None:
        """A free slot (waiting for one), or None when the frame does not fit a slot."""
        if self._map is None:
            self._allocate(nbytes)
        if nbytes > self._slot_bytes:
            return None
        with self._lock:
            while not self._free:
                self._raise()
                self._lock.wait(POLL_S)
            return self._free.popleft()

    def write(self, frame: Frame, detections: Detections) -> None:
        self._raise()
        hud = None
        if self._status is not None:
            self._status.tick()
            latency = (time.perf_counter() - frame.captured_at) * 1000
            hud = HudLine(self._status.model, self._status.fps, latency)
        image = np.ascontiguousarray(frame.image)
        if image.dtype != np.uint8:
            raise ValueError(f"a render pool draws on uint8 frames, got {image.dtype}")
        slot = self._slot_for(image.nbytes)
        if slot is None:  # too large for a slot: drawn here, written in its turn
            image = image.copy()
            _draw(image, detections, frame.index, hud)
            with self._lock:
                self._pending.append(_Pending(dataclasses.replace(frame, image=image), detections, None, drawn=True))
                self._lock.notify_all()
            return
        queued = False
        try:
            assert self._map is not None and self.path is not None
            offset = slot * self._slot_bytes
            view = np.ndarray(image.shape, np.uint8, buffer=self._map, offset=offset)
            view[...] = image
            # pickled here, so that a detections object that cannot be pickled fails in this call,
            # not silently in the queue's feeder thread (which would leave the slot undrawn for ever)
            payload = pickle.dumps((slot, str(self.path), offset, len(self._map), image.shape, detections,
                                    frame.index, hud), protocol=pickle.HIGHEST_PROTOCOL)  # fmt: skip
            with self._lock:
                self._pending.append(_Pending(dataclasses.replace(frame, image=view), detections, slot))
                queued = True
                self._tasks.put(payload)
        except BaseException:
            with self._lock:
                if queued and self._pending and self._pending[-1].slot == slot:
                    self._pending.pop()
                self._free.append(slot)
                self._lock.notify_all()
            raise

    # -- the writer thread ----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._abort:
                self._take_drawn()
                if self._write_ready():
                    continue
                with self._lock:
                    if self._closing and not self._pending:
                        return
                self._check_workers()
        except BaseException as exc:
            self._error = exc
        finally:
            with self._lock:
                self._lock.notify_all()

    def _take_drawn(self) -> None:
        """Note the slots the workers have drawn (waiting up to :data:`POLL_S` for one)."""
        try:
            message = self._done.get(timeout=POLL_S)
        except queue.Empty:
            return
        while True:
            slot, error = message
            if error is not None:
                raise SinkError(f"drawing a frame failed in a render process: {error}")
            with self._lock:
                for item in self._pending:
                    if item.slot == slot:
                        item.drawn = True
                        break
            try:
                message = self._done.get_nowait()
            except queue.Empty:
                return

    def _write_ready(self) -> bool:
        """Write the drawn frames at the head of the order; whether any was."""
        wrote = False
        while not self._abort:
            with self._lock:
                if not self._pending or not self._pending[0].drawn:
                    return wrote
                item = self._pending[0]
            for sink in self.sinks:
                sink.write(item.frame, item.detections)
            with self._lock:
                self._pending.popleft()
                if item.slot is not None:
                    self._free.append(item.slot)
                self._lock.notify_all()
            wrote = True
        return wrote

    def _check_workers(self) -> None:
        for worker in self._workers:
            if not worker.is_alive() and not self._stopping:
                raise SinkError(f"a render process died (exit code {worker.exitcode}); run without --render-procs")

    # -- closing --------------------------------------------------------------------------

    def _stop_workers(self) -> None:
        self._stopping = True
        for _ in self._workers:
            with contextlib.suppress(Exception):
                self._tasks.put(None)
        for worker in self._workers:
            if worker.pid is None:
                continue
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for q in (self._tasks, self._done):
            q.close()
            q.cancel_join_thread()

    def close(self, *, report: bool = True) -> None:
        """Write what was handed over, then stop the workers. ``report=False`` (the run is already
        ending on an error or a stop signal) logs a write error instead of raising it. A stop signal
        while waiting abandons the frames not yet written (the files keep what was)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        try:
            try:
                self._thread.join()
            except BaseException:  # Ctrl-C while frames are still being written: stop at the next frame
                self._abort = True
                self._thread.join()
                raise
        finally:
            try:
                self._stop_workers()
            finally:
                with self._lock:
                    self._pending.clear()
                if self._map is not None:
                    with contextlib.suppress(BufferError):  # a sink kept a frame's view: freed with it
                        self._map.close()
                if self.path is not None:
                    self.path.unlink(missing_ok=True)
        if report and self._error is not None and not self._reported:
            self._reported = True
            raise self._error
        if not report and self._error is not None and not self._reported:
            log.warning("writing the output failed while the run was stopping: %s", self._error)

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(report=exc_type is None)
