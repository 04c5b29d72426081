"""Frames of several sources into batches for one model: newest frame per source, sent when full or
at a deadline, sources served in turn.

DeepStream's muxer is the model: a batch goes out when it holds one frame of every active source or
when its oldest frame has waited ``deadline`` seconds, whichever comes first, so a slow or stalled
camera costs the others at most one deadline (and none once it counts as stalled), never its own
pace. Each source has one slot: a live source's newer frame replaces the one waiting there (counted
as dropped as stale); a file's reader waits until its frame was taken, so files lose nothing. With
``max_batch`` below the number of ready sources, the ones served longest ago go first: no source is
served twice before every ready source was served once.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..io.types import Frame
from .sync import POLL_S, Stopped

DEFAULT_DEADLINE_S = 1 / 30
"""The deadline when no source tells its frame rate."""
MIN_DEADLINE_S, MAX_DEADLINE_S = 0.005, 0.2
"""Bounds on the derived deadline: a 1000 fps header must not make batches of one, nor a 1 fps
camera hold the others for a second."""
WINDOW_S = 5.0
"""Frame rates are measured over the last this many seconds."""


@dataclass
class Slot:
    """One source's place in the batcher: at most one frame waiting, and its counters."""

    name: str
    order: int
    live: bool = True
    fps: float | None = None
    """The source's own rate (its header), once open; sets the default deadline and stall time."""
    running: bool = False
    """Open and delivering (set by its reader); a slot that is not running is not waited for."""
    finished: bool = False
    """Its reader is done for good: nothing more will come."""
    frame: Frame | None = None
    since: float = 0.0
    """When the slot last went from empty to holding a frame (the batch deadline counts from here)."""
    last_arrival: float = 0.0
    served: int = -1
    """When its frame was last served, as a count of frames served by then (-1: never)."""
    stale: int = 0
    """Frames replaced in the slot by a newer one before any batch took them."""
    arrivals: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=300))

    def stall_after(self) -> float:
        """No frame for this long and the source no longer holds up a batch (it counts as stalled)."""
        return max(1.0, 3.0 / self.fps) if self.fps else 1.0

    def expected(self, now: float) -> bool:
        """Worth waiting for in the current batch: running and not stalled (or holding a frame)."""
        return self.frame is not None or (self.running and now - self.last_arrival < self.stall_after())

    def input_fps(self, now: float) -> float:
        """Frames arriving per second over the last :data:`WINDOW_S` (0 before two have)."""
        recent = [t for t in self.arrivals if now - t <= WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(now - recent[0], 1e-6)


class Batcher:
    """Slots of several sources; :meth:`next_batch` gives the next batch under the deadline rule.

    Readers call :meth:`put` (from their own threads); one detect loop calls :meth:`next_batch`.
    ``deadline`` (seconds; default one frame interval of the fastest running source, within
    :data:`MIN_DEADLINE_S`..:data:`MAX_DEADLINE_S`) and ``max_batch`` (default: every source) as in
    the module's docstring. ``stop`` ends every wait (``Stopped``).
    """

    def __init__(self, stop: threading.Event, *, deadline: float | None = None, max_batch: int | None = None) -> None:
        if deadline is not None and deadline < 0:
            raise ValueError(f"deadline must be 0 or more seconds, got {deadline}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.stop = stop
        self.deadline = deadline
        self.max_batch = max_batch
        self.cond = threading.Condition()
        self.slots: dict[str, Slot] = {}
        self.batches = 0
        self._serves = 0

    def add(self, name: str, *, live: bool = True) -> Slot:
        with self.cond:
            slot = self.slots[name] = Slot(name, len(self.slots), live=live)
            return slot

    # -- readers ------------------------------------------------------------------------------

    def put(self, slot: Slot, frame: Frame) -> None:
        """Hand over ``frame``: a live source's replaces the waiting one (stale); a file's waits
        for the slot to be empty. Raises ``Stopped`` when stopped."""
        with self.cond:
            while not slot.live and slot.frame is not None:
                if self.stop.is_set():
                    raise Stopped
                self.cond.wait(POLL_S)
            if self.stop.is_set():
                raise Stopped
            now = time.perf_counter()
            if slot.frame is None:
                slot.since = now
            else:
                slot.stale += 1
            slot.frame = frame
            slot.last_arrival = now
            slot.arrivals.append(now)
            self.cond.notify_all()

    def set_state(self, slot: Slot, *, running: bool | None = None, finished: bool | None = None,
                  live: bool | None = None, fps: float | None = None) -> None:  # fmt: skip
        with self.cond:
            if running is not None:
                slot.running = running
                if running:
                    slot.last_arrival = time.perf_counter()  # a fresh start is expected, not stalled
            if finished is not None:
                slot.finished = finished
            if live is not None:
                slot.live = live
            if fps is not None:
                slot.fps = fps
            self.cond.notify_all()

    # -- the detect loop ----------------------------------------------------------------------

    def current_deadline(self) -> float:
        if self.deadline is not None:
            return self.deadline
        now = time.perf_counter()
        # the measured rate where there is one: a stream's header may say anything (MJPEG over HTTP says 25)
        rates: list[float] = [r for s in self.slots.values() if s.running and (r := s.input_fps(now) or s.fps)]
        if not rates:
            return DEFAULT_DEADLINE_S
        return min(MAX_DEADLINE_S, max(MIN_DEADLINE_S, 1.0 / max(rates)))

    def next_batch(self, timeout: float | None = None) -> list[tuple[str, Frame]] | None:
        """The next batch as ``(name, frame)`` pairs, served longest ago first; ``[]`` when every
        source has finished and nothing waits; ``None`` when ``timeout`` passed with no frame at all.
        Raises ``Stopped`` when stopped."""
        give_up = None if timeout is None else time.perf_counter() + timeout
        with self.cond:
            while True:
                if self.stop.is_set():
                    raise Stopped
                now = time.perf_counter()
                slots = list(self.slots.values())
                pending = [s for s in slots if s.frame is not None]
                if not pending:
                    if all(s.finished for s in slots):
                        return []
                    if give_up is not None and now >= give_up:
                        return None
                    self.cond.wait(POLL_S)
                    continue
                cap = self.max_batch or len(slots)
                # the batch waits for the sources whose turn it is (served longest ago), not for any
                # ``cap`` that happen to be ready: a source whose reader is a moment late keeps its turn
                turn = sorted((s for s in slots if s.expected(now)), key=_turn_order)[:cap]
                due = min(s.since for s in pending) + self.current_deadline()
                if all(s.frame is not None for s in turn) or now >= due:
                    return self._take(pending, cap)
                self.cond.wait(min(POLL_S, due - now))

    def _take(self, pending: list[Slot], cap: int) -> list[tuple[str, Frame]]:
        chosen = sorted(pending, key=_turn_order)[:cap]
        self.batches += 1
        batch = []
        for slot in chosen:
            assert slot.frame is not None
            batch.append((slot.name, slot.frame))
            slot.frame = None
            self._serves += 1  # one number per frame served, not per batch: ties would favour the first slots
            slot.served = self._serves
        self.cond.notify_all()  # a file's reader waits for its slot to empty
        return batch


def _turn_order(slot: Slot) -> tuple[int, int]:
    return slot.served, slot.order


def percentiles_ms(ages: collections.deque[float] | list[float]) -> dict[str, float]:
    """p50 and p95 of ages given in seconds, in milliseconds (0 when none)."""
    if not ages:
        return {"p50": 0.0, "p95": 0.0}
    a = np.asarray(ages) * 1000
    return {"p50": round(float(np.median(a)), 1), "p95": round(float(np.percentile(a, 95)), 1)}
