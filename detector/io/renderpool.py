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
START_TIMEOUT_S = 120.0
"""How long the pool waits for a worker process to start (a spawned interpreter imports cv2 and numpy)."""


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


def _worker(path: str, tasks: Any, done: Any) -> None:
    """A worker process: draw on the slots it is handed until it gets None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a stop is the parent's to handle: it closes the pool
    view: mmap.mmap | None = None
    done.put(("up", os.getpid(), None))
    try:
        while (task := tasks.get()) is not None:
            slot, offset, size, shape, detections, index, hud = task
            try:
                if view is None or len(view) < size:
                    if view is not None:
                        view.close()
                    with open(path, "r+b") as f:
                        view = mmap.mmap(f.fileno(), size)
                image = np.ndarray(shape, np.uint8, buffer=view, offset=offset)
                _draw(image, detections, index, hud)
                del image
                done.put(("drawn", slot, None))
            except Exception as exc:  # reported to the parent, which ends the run with it
                done.put(("drawn", slot, f"{type(exc).__name__}: {exc}"))
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
    status line. ``slots``: frames in flight (default ``2 * procs + 2``). Like
    :class:`~.offthread.OffThreadSink` it does not close ``sinks`` (their owner does, after this);
    an error of a worker or a sink is raised by the next ``write`` or by ``close``; ``close`` first
    writes every frame handed over, then stops the workers. A frame handed over is not changed
    (its image is copied into a slot).
    """

    def __init__(self, *sinks: Any, procs: int, hud: str | None = None, slots: int | None = None) -> None:
        if procs < 1:
            raise ValueError(f"a render pool needs at least one process, got {procs}")
        self.sinks = sinks
        self.procs = procs
        self.slots = slots or 2 * procs + 2
        self.hud = hud
        self._status: Any = None
        if hud is not None:
            from ..render.hud import Hud

            self._status = Hud(hud)
        shm = Path("/dev/shm")
        fd, name = tempfile.mkstemp(prefix="detector-render-", dir=shm if shm.is_dir() else None)
        os.close(fd)
        self.path = Path(name)
        self._map: mmap.mmap | None = None
        self._slot_bytes = 0
        self._free: deque[int] = deque(range(self.slots))
        self._pending: deque[_Pending] = deque()
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._reported = False
        self._closing = False
        self._closed = False
        ctx = mp.get_context("spawn")  # not fork: the caller runs threads (and maybe CUDA)
        self._tasks = ctx.Queue()
        self._done = ctx.Queue()
        self._workers = [ctx.Process(target=_worker, args=(str(self.path), self._tasks, self._done),
                                     name=f"detector-render-{i}", daemon=True) for i in range(procs)]  # fmt: skip
        try:
            with _main_module_hidden():
                for worker in self._workers:
                    worker.start()
        except BaseException:
            self._stop_workers()
            raise
        self._up = 0
        self._thread = threading.Thread(target=self._loop, name="detector-render-writer", daemon=True)
        self._thread.start()

    # -- the caller's side ----------------------------------------------------------------

    def _raise(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def _slot_for(self, nbytes: int) -> int | None:
        """A free slot (waiting for one), or None when the frame does not fit a slot."""
        if self._map is None:  # sized by the first frame: a video's frames all share its size
            self._slot_bytes = max(nbytes, 1)
            with open(self.path, "r+b") as f:
                f.truncate(self._slot_bytes * self.slots)
                self._map = mmap.mmap(f.fileno(), self._slot_bytes * self.slots)
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
            item = _Pending(dataclasses.replace(frame, image=image), detections, None, drawn=True)
            with self._lock:
                self._pending.append(item)
                self._lock.notify_all()
            return
        assert self._map is not None
        offset = slot * self._slot_bytes
        view = np.ndarray(image.shape, np.uint8, buffer=self._map, offset=offset)
        view[...] = image
        with self._lock:
            self._pending.append(_Pending(dataclasses.replace(frame, image=view), detections, slot))
        self._tasks.put((slot, offset, self._slot_bytes * self.slots, image.shape, detections, frame.index, hud))

    # -- the writer thread ----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                self._take_drawn()
                if self._write_ready():
                    continue
                with self._lock:
                    if self._closing and not self._pending:
                        return
                self._check_workers()
        except BaseException as exc:
            self._error = exc
            with self._lock:
                self._lock.notify_all()

    def _take_drawn(self) -> None:
        """Note the slots the workers have drawn (waiting up to :data:`POLL_S` for one)."""
        try:
            message = self._done.get(timeout=POLL_S)
        except queue.Empty:
            return
        while True:
            kind, value, error = message
            if kind == "up":
                self._up += 1
            else:
                if error is not None:
                    raise SinkError(f"drawing a frame failed in a render process: {error}")
                with self._lock:
                    for item in self._pending:
                        if item.slot == value:
                            item.drawn = True
                            break
            try:
                message = self._done.get_nowait()
            except queue.Empty:
                return

    def _write_ready(self) -> bool:
        """Write the drawn frames at the head of the order; whether any was."""
        wrote = False
        while True:
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

    def _check_workers(self) -> None:
        for worker in self._workers:
            if not worker.is_alive() and worker.exitcode not in (None, 0):
                raise SinkError(f"a render process died (exit code {worker.exitcode}); run without --render-procs")

    # -- closing --------------------------------------------------------------------------

    def _stop_workers(self) -> None:
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
        ending on an error or a stop signal) logs a write error instead of raising it."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        try:
            self._thread.join()
        finally:
            self._stop_workers()
            self._pending.clear()
            if self._map is not None:
                with contextlib.suppress(BufferError):  # a sink kept a frame's view: freed with it
                    self._map.close()
            self.path.unlink(missing_ok=True)
        if report:
            self._raise()
        elif self._error is not None and not self._reported:
            log.warning("writing the output failed while the run was stopping: %s", self._error)

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(report=exc_type is None)
