"""The live view's HTTP server: aiohttp on an event loop of its own thread.

asyncio, so that a connection that waits, trickles or stalls costs a few kilobytes and no thread, and none
of them can use up anything a real viewer needs:

- A connection must send a whole request head within ``timeout`` seconds of being accepted (or of its
  previous response), however it trickles: the deadline is set once, never pushed back by a byte. A
  connection that reaches it is dropped with anything unsent, so a client that stops reading holds nothing.
- Connections waiting for a request head are bounded by ``max_waiting``; one more closes the one that has
  waited longest, so a flood can only push out other waiting connections, never a viewer being served.
- The viewer cap (``max_viewers`` streams, 503 beyond) counts only authorised, complete requests: a connection
  shows the token (or, on a token-free loopback view, one loopback Host header) before it takes a slot.
- Every viewer sends the newest frame it has not sent yet, and a write that stalls for ``timeout`` seconds
  drops that viewer: a slow viewer skips frames and never holds up the pipeline or the other viewers.
- Several sources (``sources=[...]``): a frame slot per source, ``/stream/<name>.mjpg`` and
  ``/frame/<name>.jpg`` per source, and the grid page, fed by ``/grid.mjpg``, which sends each source's newest
  frame not yet sent, each part naming its source. The viewer cap counts every stream, of any kind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import logging
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import ERROR as UNPARSED

from ..errors import SinkError
from .view_access import Access, bind_socket, redact
from .view_page import (
    BOUNDARY,
    GRID_CSP,
    GRID_PAGE,
    GRID_SCRIPT,
    GRID_STYLE,
    GRID_TILE,
    PAGE,
    SCRIPT,
    SECURITY_HEADERS,
    SERVER_NAME,
    STYLE,
    part_head,
)

log = logging.getLogger(__name__)
DEFAULT_MAX_VIEWERS = 32
DEFAULT_TIMEOUT = 5.0
MAX_WAITING = 256
"""Connections waiting for a request head; well below a default limit of 1024 open files, so accept never fails."""
FRAME_WAIT_S = 5.0  # /frame.jpg before the first frame
START_TIMEOUT_S = 10.0
_BAD_METHOD: type[Exception] | tuple[()] = getattr(http_exceptions, "BadHttpMethod", ())  # older aiohttp: 400

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""A source's name on the grid: it is part of its URLs (``/stream/<name>.mjpg``) and of the page."""


def plain(status: HTTPStatus, text: str, *extra: tuple[str, str], close: bool = False) -> web.Response:
    """A text/plain response with the security headers; ``close`` ends the connection after it."""
    return respond(text.encode(), "text/plain; charset=utf-8", *extra, status=status, close=close)


def respond(
    body: bytes, content_type: str, *extra: tuple[str, str], status: HTTPStatus = HTTPStatus.OK, close: bool = False
) -> web.Response:
    """A complete response with the security headers and our own Server name (never aiohttp's or Python's)."""
    resp = web.Response(
        status=status.value, body=body, headers=response_headers(("Content-Type", content_type), *extra)
    )
    if close:
        resp.force_close()
    return resp


def response_headers(*extra: tuple[str, str]) -> dict[str, str]:
    """The security headers and our Server name, with ``extra`` added (or replacing one: the grid's CSP)."""
    return dict((*SECURITY_HEADERS, ("Server", SERVER_NAME), *extra))


class FrameSlot:
    """The newest JPEG and stats, written by the pipeline's thread and read by the server's loop.

    One slot, not a queue: a reader asks for a frame newer than the one it has, and gets the newest.
    """

    def __init__(self, on_wake: Callable[[], None] | None = None) -> None:
        self._on_wake = on_wake  # called on the loop after every wake (the grid's stream waits on any slot)
        self._lock = threading.Lock()
        self._seq = 0
        self._jpeg: bytes | None = None
        self._stats: dict[str, Any] = {"frame": 0, "fps": 0.0, "latency_ms": 0.0, "detections": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._wake_pending = False
        self.closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on ``loop`` once: from now on, publishing wakes the readers waiting on it."""
        self._changed = asyncio.Event()
        self._loop = loop

    def publish(self, jpeg: bytes, stats: dict[str, Any] | None) -> None:
        """Replace the frame (any thread); never waits for a reader."""
        with self._lock:
            self._jpeg = jpeg
            self._seq += 1
            if stats:
                self._stats.update(stats)
            wake = self._loop is not None and not self._wake_pending
            self._wake_pending = self._wake_pending or wake
        if wake and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed
                pass

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        if self._on_wake is not None:
            self._on_wake()

    def update(self, stats: dict[str, Any]) -> None:
        """Merge ``stats`` without a new frame (a source's health, which changes when no frame comes)."""
        with self._lock:
            self._stats.update(stats)

    def latest(self) -> tuple[int, bytes | None]:
        """The newest frame as (seq, jpeg or None), without waiting."""
        with self._lock:
            return self._seq, self._jpeg

    def close(self) -> None:
        """On the loop: readers waiting now, or later, return at once."""
        self.closed = True
        self._wake()

    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)

    async def newer_than(self, seq: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest frame newer than ``seq``, waiting up to ``timeout`` for one, as (seq, jpeg or None)."""
        with self._lock:
            newest, jpeg = self._seq, self._jpeg
        if newest <= seq and not self.closed and self._changed is not None:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                return seq, None
            with self._lock:
                newest, jpeg = self._seq, self._jpeg
        return (newest, jpeg) if newest > seq else (seq, None)


class _Protocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 connection, with errors answered in our plain text and headers."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed requests (aiohttp's parser) and handler failures: one plain line that quotes nothing
        the client sent, the security headers, and the connection closed."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; the connection is dropped")
        if status >= 500:
            log.error("live view: error serving a request", exc_info=exc)
        else:
            log.debug("live view: %d %s", status, redact(str(message or exc or "")))
        code = HTTPStatus.NOT_IMPLEMENTED if isinstance(exc, _BAD_METHOD) else HTTPStatus(status)
        return plain(code, f"{code.value} {code.phrase}\n", close=True)


class _Connections(web.Server):
    """aiohttp's low-level server, knowing which connections wait for a request head and until when.

    A connection waits from accept, and again after each response on a kept-alive connection, until a
    request handler admits it. A sweeper closes those past their deadline; beyond ``max_waiting`` the
    longest waiting one is closed at once.
    """

    def __init__(self, handler: Handler, *, timeout: float, max_waiting: int, warn: Callable[[str], None]) -> None:
        super().__init__(
            handler,
            request_factory=self._request,
            handler_cancellation=True,  # a viewer that hangs up ends its handler at once
            keepalive_timeout=timeout,  # aiohttp's own timer: idle kept-alive connections, from the last response
            lingering_time=0,  # a request body is never read: close instead of waiting for it
            access_log=None,  # aiohttp's access log would print the token; we log redacted lines
        )
        self.timeout = timeout
        self.max_waiting = max_waiting
        self._warn = warn
        self._waiting: OrderedDict[web.RequestHandler, float] = OrderedDict()  # in order of deadline
        self.open: set[web.RequestHandler] = set()

    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """aiohttp's request, except that a request it could not parse (its stand-in message) is answered in
        HTTP/1.1, like every other response, rather than in HTTP/1.0."""
        if message is UNPARSED:
            message = message._replace(version=HttpVersion11)
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open.add(handler)
        self.wait(handler)

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.open.discard(handler)
        self._waiting.pop(handler, None)

    def wait(self, handler: web.RequestHandler) -> None:
        """``handler``'s connection now waits for a request head, for at most ``timeout`` from now."""
        if handler not in self.open:
            return
        self._waiting.pop(handler, None)
        self._waiting[handler] = self._loop.time() + self.timeout
        if len(self._waiting) > self.max_waiting:
            oldest, _ = self._waiting.popitem(last=False)
            _drop(oldest)
            self._warn(f"{self.max_waiting} connections waiting for a request; closing the longest waiting")

    def admit(self, handler: web.RequestHandler) -> None:
        """``handler``'s request is complete and allowed: it no longer waits, and no deadline applies."""
        self._waiting.pop(handler, None)

    def expire(self) -> None:
        """Close every connection whose deadline has passed without a complete request head."""
        now = self._loop.time()
        while self._waiting:
            handler, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                return
            del self._waiting[handler]
            log.debug("live view: a connection sent no complete request within %.1f s; closed", self.timeout)
            _drop(handler)

    def abort_all(self) -> None:
        """Drop every connection now."""
        for handler in list(self.open):
            _drop(handler)


def _drop(handler: web.RequestHandler) -> None:
    """Close a connection now, discarding what it has not taken yet: a plain close would wait, with no time
    limit, for a client that does not read to take the rest of a frame."""
    if handler.transport is not None:
        handler.transport.abort()
    handler.force_close()


class LiveViewServer:
    """Serves ``/`` (page), ``/view.js``, ``/view.css``, ``/stream.mjpg``, ``/frame.jpg`` and ``/stats.json``
    on ``host:port`` from a thread running its own event loop, until :meth:`close`.

    ``token``: the access token every request must show, or None for none (then, on a loopback ``host``,
    only requests with one loopback Host header are answered). ``timeout``: seconds a connection has to send
    a request head, and the longest a stream write may stall. Binding fails at once with one-line SinkError.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        check_host: bool,
        title: str = "detector",
        max_viewers: int = DEFAULT_MAX_VIEWERS,
        timeout: float = DEFAULT_TIMEOUT,
        max_waiting: int = MAX_WAITING,
        sources: Sequence[str] | None = None,
    ) -> None:
        if max_viewers < 1:
            raise SinkError(f"--max-viewers must be at least 1, got {max_viewers}")
        self.title, self.max_viewers, self.timeout, self.max_waiting = title, max_viewers, timeout, max_waiting
        self.grid = sources is not None
        names = list(sources) if sources is not None else [""]
        bad = [n for n in names if self.grid and not SOURCE_NAME.match(n)]
        if bad or not names or len(set(names)) != len(names):
            raise SinkError(f"live view: source names must be distinct and match {SOURCE_NAME.pattern}, got {names}")
        self.slots = {name: FrameSlot(self._any_wake) for name in names}
        self.frames = self.slots[names[0]]
        """The (first) source's slot: a single-source view has only this one."""
        self._any_changed: asyncio.Event | None = None
        self.viewers = 0
        self._warned_at: dict[str, float] = {}
        self._connections: _Connections | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        sock = bind_socket(host, port)
        self.host, self.port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
        self.access = Access(token, port=self.port, check_host=check_host)
        self._routes: dict[str, Handler] = {
            "/": self._page, "/index.html": self._page, "/view.js": self._script, "/view.css": self._style,
            "/stats.json": self._stats,
        }  # fmt: skip
        if self.grid:
            self._routes["/grid.js"] = self._grid_script
            self._routes["/grid.mjpg"] = self._grid_stream
            for name, slot in self.slots.items():
                self._routes[f"/stream/{name}.mjpg"] = partial(self._stream, slot=slot)
                self._routes[f"/frame/{name}.jpg"] = partial(self._frame, slot=slot)
        else:
            self._routes["/stream.mjpg"] = partial(self._stream, slot=self.frames)
            self._routes["/frame.jpg"] = partial(self._frame, slot=self.frames)
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(sock, started), name="detector-http", daemon=True)
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    @property
    def connections(self) -> int:
        """Open TCP connections, whatever they are doing."""
        return len(self._connections.open) if self._connections is not None else 0

    def publish(self, jpeg: bytes, stats: dict[str, Any] | None = None, source: str | None = None) -> None:
        """Make ``jpeg`` the newest frame (of ``source`` on a grid) from any thread; never waits for viewers."""
        self._slot(source).publish(jpeg, stats)

    def update(self, stats: dict[str, Any], source: str | None = None) -> None:
        """Merge ``stats`` into what ``/stats.json`` shows (for ``source`` on a grid), without a frame."""
        self._slot(source).update(stats)

    def _slot(self, source: str | None) -> FrameSlot:
        if source is None and not self.grid:
            return self.frames
        if source is None or source not in self.slots or not self.grid:
            raise KeyError(f"live view: no source {source!r} (it serves {sorted(self.slots)})")
        return self.slots[source]

    def _any_wake(self) -> None:
        """On the loop, after any slot's wake: the grid's streams wait on this."""
        if self._any_changed is not None:
            changed, self._any_changed = self._any_changed, asyncio.Event()
            changed.set()

    def close(self) -> None:
        """Stop serving: every connection is dropped, the loop ends and its thread is joined."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has already closed
                pass
        self._thread.join(timeout=10)

    def warn_full(self, what: str) -> None:
        """Tell the operator the viewer cap is reached."""
        self._warn("full", f"{what}, the most it serves; answering 503 to more (--max-viewers raises it)")

    def _warn(self, kind: str, message: str) -> None:
        """Log a warning at most once a minute per kind: a flood must not flood the log."""
        now = time.monotonic()
        if now - self._warned_at.get(kind, -1e9) >= 60:
            self._warned_at[kind] = now
            log.warning("live view: %s", message)

    def _run(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        """The server thread: the loop lives and dies here (asyncio.run closes it and its tasks)."""
        try:
            asyncio.run(self._serve(sock, started))
        except BaseException as exc:  # handed to the constructor, or logged if too late
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("live view: the server stopped on an error")
        finally:
            sock.close()

    async def _serve(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._any_changed = asyncio.Event()
        for slot in self.slots.values():
            slot.attach(loop)
        self._connections = _Connections(
            self._handle,
            timeout=self.timeout,
            max_waiting=self.max_waiting,
            warn=lambda text: self._warn("waiting", text),
        )
        runner = web.ServerRunner(self._connections, shutdown_timeout=1.0)
        await runner.setup()
        sweeper: asyncio.Task[None] | None = None
        try:
            await web.SockSite(runner, sock, backlog=128).start()  # a burst waits to be accepted, not SYN-retried
            sweeper = asyncio.create_task(self._sweep())
            started.set_result(None)
            await self._stop.wait()
        finally:
            for slot in self.slots.values():
                slot.close()  # streams end their loops
            if sweeper is not None:
                sweeper.cancel()
            self._connections.abort_all()
            await runner.cleanup()

    async def _sweep(self) -> None:
        """Enforce the request-head deadline, checked a few times per timeout."""
        assert self._connections is not None
        tick = min(0.25, self.timeout / 4)
        while True:
            await asyncio.sleep(tick)
            self._connections.expire()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: the method, then the access rule, then the route; the viewer's slot only after both."""
        log.debug("live view: %s %s", request.method, redact(request.path_qs))
        if request.method != "GET":
            return plain(HTTPStatus.NOT_IMPLEMENTED, "501 Not Implemented\n", close=True)
        refused = self.access.refusal(
            request.query.getall("token", []), request.headers.getall("Cookie", []), request.headers.getall("Host", [])
        )
        if refused is not None:
            return plain(*refused, close=True)  # a connection without the token holds nothing once answered
        assert self._connections is not None
        self._connections.admit(request.protocol)
        try:
            route = self._routes.get(request.path)
            if route is None:
                return plain(HTTPStatus.NOT_FOUND, "not found\n")  # never echoes the path
            return await route(request)
        finally:
            self._connections.wait(request.protocol)  # a kept-alive connection waits for its next request

    async def _page(self, request: web.BaseRequest) -> web.StreamResponse:
        extra = (("Set-Cookie", self.access.cookie()),) if self.access.token and "token" in request.query else ()
        title = html.escape(self.title)
        if self.grid:
            tiles = "\n".join(GRID_TILE.format(name=html.escape(name)) for name in self.slots)
            page = GRID_PAGE.format(title=title, tiles=tiles)
            extra = (*extra, ("Content-Security-Policy", GRID_CSP))
        else:
            page = PAGE.format(title=title)
        return respond(page.encode(), "text/html; charset=utf-8", *extra)

    async def _script(self, request: web.BaseRequest) -> web.StreamResponse:
        return respond(SCRIPT.encode(), "text/javascript; charset=utf-8")

    async def _grid_script(self, request: web.BaseRequest) -> web.StreamResponse:
        return respond(GRID_SCRIPT.encode(), "text/javascript; charset=utf-8")

    async def _style(self, request: web.BaseRequest) -> web.StreamResponse:
        return respond((STYLE + GRID_STYLE if self.grid else STYLE).encode(), "text/css; charset=utf-8")

    async def _stats(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.grid:
            stats: dict[str, Any] = {"sources": {name: slot.stats for name, slot in self.slots.items()}}
        else:
            stats = self.frames.stats
        return respond(json.dumps({**stats, "viewers": self.viewers}).encode(), "application/json")

    async def _frame(self, request: web.BaseRequest, slot: FrameSlot) -> web.StreamResponse:
        jpeg = (await slot.newer_than(-1, FRAME_WAIT_S))[1]
        if jpeg is None:
            return plain(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet\n")
        return respond(jpeg, "image/jpeg")

    async def _stream(self, request: web.BaseRequest, slot: FrameSlot) -> web.StreamResponse:
        """MJPEG of one source: the newest frame not yet sent, each time the previous one is written."""

        async def parts(seq: int) -> tuple[int, list[tuple[str | None, bytes]]]:
            seq, jpeg = await slot.newer_than(seq, timeout=1.0)
            return seq, [] if jpeg is None else [(None, jpeg)]

        return await self._serve_stream(request, parts, -1)

    async def _grid_stream(self, request: web.BaseRequest) -> web.StreamResponse:
        """MJPEG of every source on one connection: each source's newest frame not yet sent, each part naming
        its source (``X-Source``); waits for any source's next frame when all were sent."""
        sent = dict.fromkeys(self.slots, 0)

        async def parts(_: int) -> tuple[int, list[tuple[str | None, bytes]]]:
            changed = self._any_changed  # taken before looking, so a frame published meanwhile wakes us
            out: list[tuple[str | None, bytes]] = []
            for name, slot in self.slots.items():
                seq, jpeg = slot.latest()
                if seq > sent[name] and jpeg is not None:
                    sent[name] = seq
                    out.append((name, jpeg))
            if not out and changed is not None:
                try:
                    await asyncio.wait_for(changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
            return 0, out

        return await self._serve_stream(request, parts, 0)

    async def _serve_stream(
        self,
        request: web.BaseRequest,
        parts: Callable[[int], Awaitable[tuple[int, list[tuple[str | None, bytes]]]]],
        seq: int,
    ) -> web.StreamResponse:
        """A multipart/x-mixed-replace response writing what ``parts`` gives until the view closes; one viewer
        slot while it lasts (503 when all are taken); a write that stalls ``timeout`` s drops the viewer."""
        if self.viewers >= self.max_viewers:
            self.warn_full(f"{self.max_viewers} viewers")
            text = f"this live view has its {self.max_viewers} viewers; try again later\n"
            return plain(HTTPStatus.SERVICE_UNAVAILABLE, text, ("Retry-After", "5"), close=True)
        self.viewers += 1
        try:
            resp = web.StreamResponse(
                headers=response_headers(("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}"))
            )
            resp.force_close()
            try:
                await resp.prepare(request)
            except ConnectionError:
                return resp
            while not self.frames.closed:
                seq, ready = await parts(seq)
                if not ready:
                    continue
                data = b"".join(part_head(len(jpeg), name) + jpeg + b"\r\n" for name, jpeg in ready)
                try:
                    await asyncio.wait_for(resp.write(data), self.timeout)
                except ConnectionError:  # the viewer went away
                    break
                except asyncio.TimeoutError:
                    log.debug("live view: a viewer took no data for %.1f s; dropped", self.timeout)
                    if request.transport is not None:
                        request.transport.abort()  # close() would wait for it to take what is buffered
                    break
            return resp
        finally:
            self.viewers -= 1
