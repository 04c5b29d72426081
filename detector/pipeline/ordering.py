"""Several detecting threads take batches in turn and hand results on in frame order."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .sync import POLL_S, Stopped


class InOrder:
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
                    raise Stopped
                if ticket > self._failed_at:
                    raise Failed
                if self._next == ticket:
                    break
                self._cond.wait(POLL_S)
        try:
            yield
        finally:
            with self._cond:
                self._next += 1
                self._cond.notify_all()


class Failed(Exception):
    """Another detecting thread failed: this one stops without handing on more results."""
