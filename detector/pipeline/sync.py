"""Stop-aware queue helpers and the stage thread, shared by the feed, the detect loop and stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

POLL_S = 0.05
"""How often a waiting stage looks at the stop signal."""
DONE = object()
"""Put into a queue after the last item."""


class Stopped(Exception):  # noqa: N818 (a signal, not an error)
    """Raised inside a stage when another stage asked everyone to stop."""


def put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise Stopped
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            continue


def get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise Stopped
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue


class Worker(threading.Thread):
    """A stage's thread: an exception other than ``Stopped`` is kept in ``error`` and sets ``stop``."""

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._stop_event = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except Stopped:
            pass
        except BaseException as exc:  # handed to the caller, which re-raises it
            self.error = exc
            self._stop_event.set()
