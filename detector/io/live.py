"""Live sources (webcam, RTSP/HTTP stream): a capture thread keeps only the newest frame.

A model slower than the camera then always works on the most recent frame
instead of an ever older backlog. A dropped stream is reopened with bounded
exponential backoff (reported in the log) until ``reconnect_timeout`` of
continuous failure; opening an unreachable stream fails within ``open_timeout``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from ..errors import SourceError
from .types import Frame, Source, SourceInfo

log = logging.getLogger(__name__)


def _capture_stream(url: str, open_timeout: float) -> cv2.VideoCapture:
    ms = int(open_timeout * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


SECRET_QUERY = re.compile(
    r"([?&;](?:user(?:name)?|usr|login|pass(?:word|wd)?|pwd|psw|token|access_token|(?:api_?)?key|auth|secret"
    r"|sig(?:nature)?)=)[^&#\s]*",
    re.IGNORECASE,
)
"""Query parameters that carry credentials in camera URLs (``?user=admin&pwd=...``): their values are hidden."""


def redact(url: str) -> str:
    """The URL without a password (in ``user:password@`` or in credential query parameters), for messages,
    logs and the live view's stats."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        url = f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return SECRET_QUERY.sub(r"\1***", url)


class LiveSource(Source):
    """Newest-frame-only capture from a camera or stream, in a background thread."""

    live = True

    def __init__(
        self,
        opener: Callable[[], cv2.VideoCapture],
        *,
        name: str,
        kind: str,
        reconnect: bool,
        reconnect_timeout: float = 60.0,
        max_backoff: float = 5.0,
        first_frame_timeout: float = 10.0,
    ) -> None:
        self.name = redact(name)
        """The camera index or stream URL, password redacted: safe for messages, logs and frames."""
        self.kind = kind
        self._opener = opener
        self._reconnect = reconnect
        self._reconnect_timeout = reconnect_timeout
        self._max_backoff = max_backoff
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: tuple[int, float, np.ndarray] | None = None
        self._ended = False
        self._error: SourceError | None = None
        self.reconnects = 0
        self.dropped = 0
        """Frames captured but never handed out (replaced by a newer one first)."""
        self._cap = opener()
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(self._open_error())
        ok, first = self._read_first(first_frame_timeout)
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"{kind} {self.name} opened but delivered no frame within {first_frame_timeout:g} s")
        h, w = first.shape[:2]
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.info = SourceInfo(kind, self.name, w, h, fps if 0 < fps < 1000 else None, None)  # type: ignore[arg-type]
        self._start = time.perf_counter()
        self._index = 0
        self._publish(first)  # frame 0; the thread publishes the rest
        self._thread = threading.Thread(target=self._capture_loop, name="detector-capture", daemon=True)
        self._thread.start()

    def _open_error(self) -> str:
        if self.kind == "camera":
            return (f"camera {self.name} cannot be opened; check it is connected and not in use "
                    "(ls /dev/video*), or pass a video file or stream URL")  # fmt: skip
        return f"stream {self.name} cannot be opened; check the URL, the network and that the server is up"

    def _read_first(self, timeout: float) -> tuple[bool, np.ndarray | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return True, frame
            time.sleep(0.05)
        return False, None

    def _publish(self, frame: np.ndarray) -> None:
        with self._cond:
            self._latest = (self._index, time.perf_counter(), frame)
            self._index += 1
            self._cond.notify_all()

    def _capture_loop(self) -> None:
        """Owns the capture from here on: only this thread reads, reopens and releases it."""
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                if ok and frame is not None:
                    self._publish(frame)
                    continue
                if not self._reconnect or not self._reopen():
                    break
        finally:
            self._cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _reopen(self) -> bool:
        """Reopen with backoff 0.5, 1, 2, ... up to ``max_backoff`` s; False after ``reconnect_timeout``."""
        self._cap.release()
        started = time.monotonic()
        delay = 0.5
        while not self._stop.is_set():
            log.warning("stream %s lost; reconnecting in %.1f s", self.name, delay)
            if self._stop.wait(delay):
                return False
            self._cap = self._opener()
            if self._cap.isOpened():
                ok, frame = self._cap.read()
                if ok and frame is not None:
                    self.reconnects += 1
                    log.warning("stream %s reconnected", self.name)
                    self._publish(frame)
                    return True
            self._cap.release()
            if time.monotonic() - started > self._reconnect_timeout:
                self._error = SourceError(
                    f"stream {self.name} lost and not back within {self._reconnect_timeout:g} s; check the server"
                )
                return False
            delay = min(delay * 2, self._max_backoff)
        return False

    def __iter__(self) -> Iterator[Frame]:
        last = -1
        while True:
            with self._cond:
                while not self._stop.is_set() and not self._ended and (self._latest is None or self._latest[0] <= last):
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
                if self._latest is None or self._latest[0] <= last:  # ended with nothing new
                    break
                index, captured, frame = self._latest
                self.dropped += index - last - 1
                last = index
            yield Frame(index, captured - self._start, frame, self.name, captured)
        if self._error is not None:
            raise self._error

    def interrupt(self) -> None:
        """Make iteration return now, from another thread, without waiting for the capture thread
        (``close()`` joins it; a stalled stream would hold up whoever stops several sources)."""
        self._stop.set()

    def close(self) -> None:
        """Stop the capture thread; it releases its capture itself when its current read returns
        (a read blocked on a dead stream ends at the stream's read timeout)."""
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is None:
            return
        thread.join(timeout=10)
        if thread.is_alive():
            log.warning("%s %s: the capture is still busy; it will be released when its read returns",
                        self.kind, self.name)  # fmt: skip


def open_camera(index: int, **kwargs: float) -> LiveSource:
    return LiveSource(lambda: cv2.VideoCapture(index), name=str(index), kind="camera", reconnect=False, **kwargs)


def open_stream(url: str, *, open_timeout: float = 10.0, **kwargs: float) -> LiveSource:
    return LiveSource(lambda: _capture_stream(url, open_timeout), name=url, kind="stream", reconnect=True, **kwargs)
