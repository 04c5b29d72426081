"""``multi_stream()``: many cameras, streams or files through one model in one detect loop.

Each source has a reader thread of its own that opens it, feeds its newest frame to the
:class:`~.batcher.Batcher` and, for cameras and streams, reopens it with backoff when it fails, so
a source that stalls, drops or never opens never holds up the others (Frigate's watchdog, not
Ultralytics' batch that waits for every stream). The detecting happens in the caller's thread,
as in :func:`~.stream.stream`: one batch in flight, at most one frame waiting per source.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..io.live import SECRET_QUERY, open_camera, open_stream, redact
from ..io.sources import STREAM_SCHEMES, open_source
from ..io.types import Frame, Source, SourceInfo
from ..predictor import Detector
from ..structures import Detections
from .batcher import WINDOW_S, Batcher, Slot, percentiles_ms
from .stream import check_arguments
from .sync import Stopped

log = logging.getLogger(__name__)

SourceSpec = str | int | Path | Source | Iterable[Frame] | Callable[[], Any]
"""What ``open_source`` takes (camera index, stream URL, file, folder), an opened source (handed
over: closed by the stream), any iterable of frames, or a function that opens a source (called in
the reader thread, again after each failure)."""

STATES = ("connecting", "running", "reconnecting", "ended", "failed")
_PASSWORD = re.compile(r"(\w+://[^:/@\s]+):[^@\s]*@")


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced by ``***``, and the values of
    credential query parameters (``?user=...&pwd=...``) too."""
    return SECRET_QUERY.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_text(text[0] if text else type(exc).__name__)


def _opener(spec: SourceSpec, connect_timeout: float) -> tuple[Callable[[], Any], bool, str]:
    """``(open, retry, label)``: how the reader opens ``spec``, whether it reopens it after a failure
    or its end (cameras, streams and opener functions), and a password-free label for messages."""
    if isinstance(spec, (str, int, Path)):
        text = str(spec)
        if text.isdigit():
            return (lambda: open_camera(int(text))), True, f"camera {text}"
        if text.lower().startswith(STREAM_SCHEMES):
            return (lambda: open_stream(text, open_timeout=connect_timeout, first_frame_timeout=connect_timeout),
                    True, redact(text))  # fmt: skip
        return (lambda: open_source(spec)), False, text
    if callable(spec) and not hasattr(spec, "__iter__"):
        return spec, True, getattr(spec, "__name__", "opener")
    label = str(getattr(getattr(spec, "info", None), "path", type(spec).__name__))
    return (lambda: spec), False, redact(label)


def _interrupt(source: Any) -> None:
    """Make a source's iteration return now, from another thread (:meth:`LiveSource.interrupt`; not
    ``close()``, which also joins its capture thread, so one stalled stream would hold up the others)."""
    interrupt = getattr(source, "interrupt", None)
    if callable(interrupt):
        interrupt()


class _Reader:
    """One source's thread: open (with backoff), feed newest frames to its slot, reopen, close."""

    def __init__(self, name: str, spec: SourceSpec, batcher: Batcher, stop: threading.Event, *,
                 connect_timeout: float, max_backoff: float) -> None:  # fmt: skip
        self.name = name
        self._open, self.retry, self.label = _opener(spec, connect_timeout)
        self.batcher = batcher
        self.slot: Slot = batcher.add(name, live=self.retry)
        self.stop = stop
        self.max_backoff = max_backoff
        self.join_timeout = 2 * connect_timeout + 5
        self.lock = threading.Lock()
        self.state = "connecting"
        self.last_error: str | None = None
        self.reconnects = 0
        self.info: SourceInfo | None = None
        self.opened = threading.Event()
        self._current: Any = None
        self._source_dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"detector-multi-{name}", daemon=True)

    @property
    def dropped(self) -> int:
        """Frames dropped as stale: replaced in the slot, plus those the source's capture skipped."""
        with self.lock:
            current = int(getattr(self._current, "dropped", 0) or 0)
            return self.slot.stale + self._source_dropped + current

    def _set(self, state: str, error: BaseException | None = None) -> None:
        with self.lock:
            self.state = state
            if error is not None:
                self.last_error = _one_line(error)

    def _run(self) -> None:
        try:
            self._loop()
        except Stopped:
            pass
        except BaseException as exc:  # a bug, not a source failure: reported, the others go on
            log.error("%s: reader failed: %s", self.name, _one_line(exc))
            self._set("failed", exc)
        finally:
            self.batcher.set_state(self.slot, running=False, finished=True)

    def _loop(self) -> None:
        delay, failures = 0.5, 0
        while not self.stop.is_set():
            try:
                source = self._open()
            except Exception as exc:
                failures += 1
                self._set("reconnecting" if self.opened.is_set() else "connecting", exc)
                if not self.retry:
                    self._set("failed")
                    log.warning("%s: %s", self.name, self.last_error)
                    return
                if failures == 1:  # one line per outage; every try is in the debug log
                    log.warning("%s: %s; retrying in the background", self.name, self.last_error)
                else:
                    log.debug("%s: still down (try %d): %s", self.name, failures, self.last_error)
                if self.stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_backoff)
                continue
            if failures and self.opened.is_set():
                self.reconnects += 1
            if failures:
                log.warning("%s: up after %d failed tries", self.name, failures)
            delay, failures = 0.5, 0
            error = self._feed(source)
            if self.stop.is_set():
                return
            if error is not None:
                log.warning("%s: %s", self.name, _one_line(error))
            if not self.retry:
                self._set("failed" if error is not None else "ended", error)
                return
            self._set("reconnecting", error)
            failures = 1  # the next successful open logs that it is back
            if self.stop.wait(delay):
                return

    def _feed(self, source: Any) -> BaseException | None:
        """Frames of one opened source into the slot until it ends; closes it (this thread opened it)."""
        info = getattr(source, "info", None)
        live = bool(getattr(source, "live", False))
        with self.lock:
            self._current = source
            self.info = info if isinstance(info, SourceInfo) else self.info
            self.state = "running"
        if self.stop.is_set():
            _interrupt(source)  # close() ran while this was opening
        self.batcher.set_state(self.slot, running=True, live=live, fps=getattr(info, "fps", None))
        self.opened.set()
        error: BaseException | None = None
        try:
            for frame in source:
                self.batcher.put(self.slot, frame)
        except Stopped:
            pass
        except Exception as exc:
            error = exc
        finally:
            self.batcher.set_state(self.slot, running=False)
            with self.lock:
                self._source_dropped += int(getattr(source, "dropped", 0) or 0)
                self._current = None
            close = getattr(source, "close", None)
            if callable(close):
                close()
        return error

    def interrupt(self) -> None:
        with self.lock:
            current = self._current
        if current is not None:
            _interrupt(current)


class MultiStream:
    """``(name, frame, detections)`` from several sources as they come, through one model.

    Iterate it, or use it as a context manager (leaving the ``with`` stops and joins every reader
    thread). A batch takes the newest frame of each source that has one and goes through the
    model as soon as it holds one frame per active source or its oldest frame waited ``deadline``
    seconds (default: one frame interval of the fastest source); ``max_batch`` caps its size, and
    sources are then served in turn. A source that fails to open is logged once and retried in the
    background (cameras and streams, with backoff up to ``max_backoff``); the first ``next()``
    raises :class:`SourceError` only when no source opened within ``open_timeout`` seconds.
    :meth:`health` tells each source's state and figures. Frames of one batch may differ in size.
    """

    def __init__(
        self,
        detector: Detector,
        sources: Mapping[str, SourceSpec] | Sequence[SourceSpec],
        *,
        deadline: float | None = None,
        max_batch: int | None = None,
        open_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        named = _named(sources)
        if not named:
            raise ValueError("multi_stream() needs at least one source")
        self.detector = detector
        self.open_timeout = open_timeout
        self._stop = threading.Event()
        self.batcher = Batcher(self._stop, deadline=deadline, max_batch=max_batch)
        self._readers = {
            name: _Reader(
                name, spec, self.batcher, self._stop, connect_timeout=connect_timeout, max_backoff=max_backoff
            )  # fmt: skip
            for name, spec in named.items()
        }
        self._ready: collections.deque[tuple[str, Frame, Detections]] = collections.deque()
        self._stats_lock = threading.Lock()
        self._frames = dict.fromkeys(named, 0)
        self._done_at: dict[str, collections.deque[float]] = {n: collections.deque(maxlen=600) for n in named}
        self._ages: dict[str, collections.deque[float]] = {n: collections.deque(maxlen=300) for n in named}
        self.last_batch: tuple[str, ...] = ()
        """The sources of the batch the last pair came from (in the order they were served)."""
        self._started_at: float | None = None
        self._closed = False

    @property
    def names(self) -> list[str]:
        return list(self._readers)

    def info(self, name: str) -> SourceInfo | None:
        """The source's size and rate once it has opened (None before): what a per-source sink needs."""
        return self._readers[name].info

    def start(self) -> None:
        """Start the readers (done by the first ``next()`` or ``with`` if not called)."""
        if self._started_at is None and not self._closed:
            self._started_at = time.perf_counter()
            for reader in self._readers.values():
                reader.thread.start()

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> MultiStream:
        return self

    def __next__(self) -> tuple[str, Frame, Detections]:
        if self._ready:
            return self._ready.popleft()
        if self._closed:
            raise StopIteration
        self.start()
        try:
            batch = self._next_batch()
            if not batch:
                self.close()
                self._raise_if_all_failed()
                raise StopIteration
            results = self.detector([frame.image for _, frame in batch])
        except Stopped:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise
        self._record(batch)
        self.last_batch = tuple(name for name, _ in batch)
        self._ready.extend((name, frame, dets) for (name, frame), dets in zip(batch, results, strict=True))
        return self._ready.popleft()

    def _next_batch(self) -> list[tuple[str, Frame]]:
        assert self._started_at is not None
        while not any(r.opened.is_set() for r in self._readers.values()):
            left = self.open_timeout - (time.perf_counter() - self._started_at)
            if left <= 0 or all(not r.thread.is_alive() for r in self._readers.values()):
                raise SourceError(self._none_opened())
            batch = self.batcher.next_batch(timeout=min(left, 0.25))
            if batch is not None:
                return batch
        batch = self.batcher.next_batch()
        return [] if batch is None else batch

    def _none_opened(self) -> str:
        errors = "; ".join(f"{r.name}: {r.last_error or 'no frame yet'}" for r in self._readers.values())
        return f"no source opened within {self.open_timeout:g} s ({errors})"

    def _raise_if_all_failed(self) -> None:
        readers = list(self._readers.values())
        if readers and all(r.state == "failed" for r in readers):
            first = readers[0]
            raise SourceError(f"{first.name}: {first.last_error}" if len(readers) > 1 else str(first.last_error))

    def _record(self, batch: list[tuple[str, Frame]]) -> None:
        now = time.perf_counter()
        with self._stats_lock:
            for name, frame in batch:
                self._frames[name] += 1
                self._done_at[name].append(now)
                if frame.captured_at:
                    self._ages[name].append(now - frame.captured_at)

    # -- health -------------------------------------------------------------------------------

    def health(self) -> dict[str, dict[str, Any]]:
        """Per source, JSON-ready: ``state`` (one of :data:`STATES`; a running source with no frame
        for a few intervals reads ``reconnecting``), ``fps`` (detected, over the last 5 s),
        ``input_fps`` (arriving), ``frames`` (detected), ``dropped`` (as stale), ``age_ms`` (capture
        to detections, p50/p95 of the last 300), ``seconds_since_frame``, ``reconnects``,
        ``last_error`` (passwords redacted), ``source`` (label), ``width``/``height``/``source_fps``."""
        now = time.perf_counter()
        out: dict[str, dict[str, Any]] = {}
        with self.batcher.cond:
            slots = {name: (s.running, s.last_arrival, s.stall_after(), s.input_fps(now), bool(s.arrivals))
                     for name, s in self.batcher.slots.items()}  # fmt: skip
        for name, reader in self._readers.items():
            running, last, stall_after, input_fps, any_frame = slots[name]
            with reader.lock:
                state, error, info = reader.state, reader.last_error, reader.info
            if state == "running" and running and now - last > stall_after:
                state = "reconnecting"
            with self._stats_lock:
                recent = [t for t in self._done_at[name] if now - t <= WINDOW_S]
                fps = (len(recent) - 1) / max(now - recent[0], 1e-6) if len(recent) > 1 else 0.0
                frames, ages = self._frames[name], list(self._ages[name])
            out[name] = {
                "state": state,
                "fps": round(fps, 2),
                "input_fps": round(input_fps, 2),
                "frames": frames,
                "dropped": reader.dropped,
                "age_ms": percentiles_ms(ages),
                "seconds_since_frame": round(now - last, 2) if any_frame else None,
                "reconnects": reader.reconnects,
                "last_error": error,
                "source": reader.label,
                "width": getattr(info, "width", None),
                "height": getattr(info, "height", None),
                "source_fps": getattr(info, "fps", None),
            }
        return out

    # -- the end ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every reader, make each one's source return from its wait, and join them all."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        readers = list(self._readers.values())
        for reader in readers:
            reader.interrupt()
        for reader in readers:
            if reader.thread.is_alive():
                reader.thread.join(reader.join_timeout)
                if reader.thread.is_alive():
                    log.warning("%s: its source is still busy opening or reading; it is released when that returns",
                                reader.name)  # fmt: skip

    def __enter__(self) -> MultiStream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _named(sources: Mapping[str, SourceSpec] | Sequence[SourceSpec]) -> dict[str, SourceSpec]:
    if isinstance(sources, Mapping):
        for name in sources:
            if not isinstance(name, str) or not name:
                raise TypeError(f"source names must be non-empty strings, got {name!r}")
        return dict(sources)
    if isinstance(sources, (str, Path, int)):
        sources = [sources]
    named: dict[str, SourceSpec] = {}
    for spec in sources:
        base = _opener(spec, 0.0)[2] if isinstance(spec, (str, int, Path)) else f"source{len(named)}"
        name, n = base, 2
        while name in named:
            name, n = f"{base}#{n}", n + 1
        named[name] = spec
    return named


def multi_stream(
    detector: Detector,
    sources: Mapping[str, SourceSpec] | Sequence[SourceSpec],
    *,
    deadline: float | None = None,
    max_batch: int | None = None,
    open_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    max_backoff: float = 5.0,
) -> MultiStream:
    """Yield ``(name, frame, detections)`` from every source as they come (see :class:`MultiStream`)::

    with multi_stream(model, {"door": "rtsp://cam1/s", "yard": "rtsp://cam2/s"}) as results:
        for name, frame, dets in results:
            ...
            results.health()  # {"door": {"state": "running", "fps": 9.8, ...}, ...}

    ``sources`` maps names to what ``open_source`` takes, opened sources (closed with the stream),
    iterables of frames, or functions that open a source; a list is named by its specs.
    """
    check_arguments("multi_stream", detector, sources)
    return MultiStream(detector, sources, deadline=deadline, max_batch=max_batch, open_timeout=open_timeout,
                       connect_timeout=connect_timeout, max_backoff=max_backoff)  # fmt: skip
