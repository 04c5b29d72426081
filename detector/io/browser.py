"""Browser live view: a small HTML page and an MJPEG stream of annotated frames over HTTP.

:class:`BrowserSink` is the sink: it JPEG-encodes each frame once, in the pipeline's writer thread, and
publishes it to a :class:`~detector.io.view_server.LiveViewServer`, which serves it from an event loop of
its own thread. Every viewer sends the newest frame it has not sent yet, so a slow or stalled viewer skips
frames and never holds up the pipeline or the other viewers.

Safe to expose: beyond loopback every request needs the access token (a random one unless given), compared
in constant time; a token-free loopback view answers only to one loopback Host header; streams are capped
(503 beyond) and only authorised, complete requests take a slot; a connection must send its request head
within a deadline however it trickles, and those waiting for one are bounded; every response carries
headers that stop caching, sniffing, framing, referrers and any script or style not from the page. The
rules live in :mod:`.view_access`, the server in :mod:`.view_server`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..errors import SinkError
from .base import Closeable
from .view_access import (
    NO_TOKEN,
    TOKEN_ENV,
    access_token,
    check_address,
    check_token,
    is_loopback,
    parse_address,
)
from .view_page import BOUNDARY, SECURITY_HEADERS
from .view_server import DEFAULT_MAX_VIEWERS, DEFAULT_TIMEOUT, MAX_WAITING, LiveViewServer

__all__ = [
    "BOUNDARY",
    "DEFAULT_MAX_VIEWERS",
    "DEFAULT_TIMEOUT",
    "MAX_WAITING",
    "NO_TOKEN",
    "SECURITY_HEADERS",
    "TOKEN_ENV",
    "BrowserSink",
    "access_token",
    "check_address",
    "check_token",
    "is_loopback",
    "parse_address",
]


class BrowserSink(Closeable):
    """Serves ``/`` (page), ``/stream.mjpg``, ``/frame.jpg`` and ``/stats.json`` (and the page's
    ``/view.js`` and ``/view.css``) on ``host:port`` until closed.

    ``sources``: names of several sources, for a grid: ``/`` shows a tile per source, each source has
    ``/stream/<name>.mjpg`` and ``/frame/<name>.jpg``, ``/stats.json`` holds ``{"sources": {name: ...}}``,
    and :meth:`write` and :meth:`update` take the source's name.

    ``token``: None for a random one when ``host`` is not loopback (none on loopback), ``"none"``
    for no token, or the token to require. ``max_viewers`` caps concurrent streams. ``timeout``: the
    seconds a connection has to send a whole request head, and the longest a stream write may stall.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        title: str = "detector",
        quality: int = 80,
        token: str | None = None,
        max_viewers: int = DEFAULT_MAX_VIEWERS,
        timeout: float = DEFAULT_TIMEOUT,
        sources: Sequence[str] | None = None,
    ) -> None:
        self.title, self.quality, self.max_viewers, self.timeout = title, quality, max_viewers, timeout
        self.token = access_token(host, token)
        self.server = LiveViewServer(host, port, token=self.token, check_host=self.token is None and is_loopback(host),
                                     title=title, max_viewers=max_viewers, timeout=timeout,
                                     sources=sources)  # fmt: skip
        self.host, self.port = self.server.host, self.server.port

    @property
    def url(self) -> str:
        """The base URL, without the token (append a path, or use :meth:`url_for`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def url_for(self, path: str = "") -> str:
        """``url + path``, with the token when one is required."""
        return self.url + path + (f"?token={self.token}" if self.token else "")

    @property
    def view_url(self) -> str:
        """The page's URL to open or give to a viewer: with the token, when one is required."""
        return self.url_for()

    @property
    def viewers(self) -> int:
        """Streams being served now."""
        return self.server.viewers

    @property
    def connections(self) -> int:
        """Open HTTP connections, whatever they are doing (each costs the event loop a little memory)."""
        return self.server.connections

    @property
    def stats(self) -> dict[str, Any]:
        """The stats last published, as ``/stats.json`` shows them (without the viewer count); per source on a grid."""
        if self.server.grid:
            return {"sources": {name: slot.stats for name, slot in self.server.slots.items()}}
        return self.server.frames.stats

    def write(self, frame: np.ndarray, stats: dict[str, Any] | None = None, source: str | None = None) -> None:
        """Publish a frame (of ``source`` on a grid); never blocks on viewers."""
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise SinkError("cannot encode the frame as JPEG")
        self.server.publish(buf.tobytes(), stats, source)

    def update(self, stats: dict[str, Any], source: str | None = None) -> None:
        """Merge ``stats`` (e.g. a source's health) into ``/stats.json`` without a frame."""
        self.server.update(stats, source)

    def close(self) -> None:
        """Stop the server; safe to call twice."""
        self.server.close()
