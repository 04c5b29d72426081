"""The live view is safe to expose: token, caps, timeouts, headers -- against a real server on 127.0.0.1.

A token asked for explicitly makes a loopback server behave as one bound beyond loopback, so
nothing here sends to any other address; one test binds 0.0.0.0 (with its random token) to check that
kind of view as users start it, and reaches it via 127.0.0.1. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import http.client
import itertools
import json
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from detector.errors import SinkError
from detector.io import browser
from detector.io.browser import BOUNDARY, DEFAULT_TIMEOUT, BrowserSink, access_token, check_token

from .conftest import TORCHSCRIPT, VIDEO, need

TOKEN = "test-token-0123456789abcdef"
ENDPOINTS = ("/", "/index.html", "/stream.mjpg", "/frame.jpg", "/stats.json", "/view.js", "/view.css", "/nope")


class Publisher:
    """Feeds a BrowserSink small frames at ``fps`` until closed."""

    def __init__(
        self, sink: BrowserSink, fps: float = 30.0, shape: tuple[int, int] = (96, 128), noise: bool = False
    ) -> None:
        self.sink, self.period, self.shape = sink, 1.0 / fps, shape
        self.noise = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8) if noise else None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        i = 0
        while not self.stop.is_set():
            frame = np.full((*self.shape, 3), i % 256, np.uint8) if self.noise is None else self.noise  # ~200 kB JPEG
            self.sink.write(frame, {"frame": i})
            i += 1
            self.stop.wait(self.period)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def served() -> Iterator[BrowserSink]:
    sink = BrowserSink("127.0.0.1", 0, token=TOKEN, timeout=2.0)
    pub = Publisher(sink)
    try:
        yield sink
    finally:
        pub.close()
        sink.close()


def get(
    server: BrowserSink | int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET to a live view (or its port); for the stream, the status, headers and first bytes only."""
    port = server if isinstance(server, int) else server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read(2048) if "multipart" in (resp.getheader("Content-Type") or "") else resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("detector-http")]


def wait_until(predicate, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_token_policy() -> None:
    assert access_token("127.0.0.1") is None and access_token("::1") is None and access_token("localhost") is None
    first, second = access_token("0.0.0.0"), access_token("0.0.0.0")
    assert first and second and first != second and len(first) >= 32, "random, and new for every start"
    assert access_token("127.0.0.1", TOKEN) == TOKEN, "a token asked for is required on loopback too"
    assert access_token("192.0.2.1", "none") is None
    for bad in ("short", "x" * 15, "has space in it 1234", "semi;colon-0123456789", "é" * 20):
        with pytest.raises(SinkError, match="--serve-token must be") as err:
            check_token(bad)
        assert bad not in str(err.value), "the error never echoes the secret"


def test_opting_out_beyond_loopback_warns_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="detector"):
        assert access_token("0.0.0.0", "none") is None  # decided without binding anything
        assert access_token("127.0.0.1", "none") is None  # loopback: nothing to warn about
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no access token" in warnings[0] and "\n" not in warnings[0]


def test_every_endpoint_refuses_without_the_right_token(served: BrowserSink) -> None:
    wrong = "wrong-token-0123456789abcdef"
    for path in ENDPOINTS:
        status, headers, body = get(served, path)
        assert status == 401, (path, status)
        assert b"access token" in body and TOKEN.encode() not in body
        assert "set-cookie" not in headers
        assert get(served, f"{path}?token={wrong}")[0] == 403, path
        assert get(served, f"{path}?token=")[0] == 401, path  # an empty token is no token
        assert get(served, path, {"Cookie": f"detector_token_{served.port}={wrong}"})[0] == 403, path
        # a cookie for another port's live view is not this one's
        assert get(served, path, {"Cookie": f"detector_token_{served.port + 1}={TOKEN}"})[0] == 401, path
    assert served.viewers == 0, "a refused stream never counted as a viewer"


def test_the_token_works_by_query_and_by_cookie(served: BrowserSink, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def compare(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return _compare(a, b)

    _compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", compare)
    assert served.view_url == f"http://127.0.0.1:{served.port}/?token={TOKEN}"
    status, headers, page = get(served, f"/?token={TOKEN}")
    assert status == 200 and b'<img id="view" src="/stream.mjpg"' in page and TOKEN.encode() not in page
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"detector_token_{served.port}={TOKEN};")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    jar = {"Cookie": cookie.split(";", 1)[0]}
    for path in ("/", "/view.js", "/view.css", "/stats.json", "/frame.jpg", "/stream.mjpg"):
        status, headers, body = get(served, path, jar)
        assert status == 200, path
        assert "set-cookie" not in headers, "the cookie is set by the page opened with the token only"
    assert get(served, "/frame.jpg?token=" + TOKEN)[2][:2] == b"\xff\xd8"
    assert get(served, "/stream.mjpg", {"Cookie": "other=1; " + jar["Cookie"]})[2].startswith(b"--detectorframe")
    assert get(served, "/nope?token=" + TOKEN)[0] == 404
    assert len(calls) >= 9, "every check goes through hmac.compare_digest"


def test_hygiene_headers_on_every_response(served: BrowserSink) -> None:
    responses = [get(served, p + "?token=" + TOKEN) for p in ENDPOINTS] + [get(served, "/"), get(served, "/?token=x")]
    assert [r[0] for r in responses] == [200] * 7 + [404, 401, 403]
    for status, h, _ in responses:
        assert h["cache-control"] == "no-store", status
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer"
        csp = h["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        sources = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        for kind in ("script-src", "style-src", "img-src", "connect-src"):
            assert sources[kind] == ["'self'"], csp  # the grid page alone adds blob: images (test below)
        assert h["server"].startswith("detector") and "Python" not in h["server"]


def test_no_endpoint_reflects_what_it_is_given(served: BrowserSink) -> None:
    evil = "<script>alert(1)</script>"
    for path in (f"/{evil}", f"/x?token={TOKEN}&q={evil}", f"/{evil}?token={TOKEN}"):
        status, _, body = get(served, path.replace(" ", "%20"))
        assert status in (401, 404) and b"<script" not in body and b"alert" not in body
    # malformed requests: http.server's own errors, in plain text, with the headers, quoting nothing
    for raw, code in ((f"GET / HTTP/9{evil}", 400), (f"{evil} / HTTP/1.1", 501), (f"POST /{evil} HTTP/1.1", 501)):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
            s.sendall(f"{raw}\r\nHost: x\r\n\r\n".encode())
            reply = s.recv(65536)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code} ".encode()), raw
        assert b"text/plain" in head and b"nosniff" in head and b"script" not in body and b"alert" not in reply


def test_token_free_loopback_answers_only_to_loopback_host_names() -> None:
    """A page on another site that rebinds its name to 127.0.0.1 must not read the frames."""
    with BrowserSink("127.0.0.1", 0) as sink:
        Publisher(sink).close()  # one frame is there
        assert sink.token is None and sink.view_url == sink.url
        for host in ("localhost", f"localhost:{sink.port}", f"127.0.0.1:{sink.port}", "127.0.0.2", "[::1]:80"):
            assert get(sink, "/frame.jpg", {"Host": host})[0] == 200, host
        for host in ("evil.example", f"evil.example:{sink.port}", "localhost.evil.example"):
            status, _, body = get(sink, "/frame.jpg", {"Host": host})
            assert status == 403 and b"evil" not in body, host


def test_200_connections_at_once_serve_the_cap_and_leave_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    cap = 32
    sink = BrowserSink("127.0.0.1", 0, token=TOKEN)  # default cap
    pub = Publisher(sink, fps=20)
    socks: list[socket.socket] = []
    try:
        assert sink.max_viewers == cap
        request = f"GET /stream.mjpg?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        start = time.monotonic()
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
            s.sendall(request)
            socks.append(s)
        statuses, waits = [], []
        for s in socks:
            t0 = time.monotonic()
            try:
                line = s.recv(64).split(b"\r\n", 1)[0]
                statuses.append(int(line.split()[1]) if line else "closed")
            except ConnectionResetError:
                statuses.append("reset")
            waits.append(time.monotonic() - t0)
        served_now = statuses.count(200)
        assert served_now == cap, f"{served_now} served: {sorted(map(str, statuses))[:5]}..."
        assert statuses.count(503) >= 200 - cap - 10, "the rest are told 503 (a few may see the socket close)"
        assert set(statuses) <= {200, 503, "reset", "closed"}
        assert time.monotonic() - start < 15 and max(waits) < 5, "refused at once, not after a timeout"
        assert len(server_threads()) <= 1 + 2 * cap, "a thread per open connection, and no more than the cap"
        assert wait_until(lambda: sink.viewers == cap, 5)
        full = [r for r in caplog.records if "the most it serves" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.WARNING, "the operator is told once, not 168 times"
        # a stats request still gets through (the refused connections were closed), and sees the cap
        assert wait_until(lambda: sink.connections == cap, 5), sink.connections
        assert b'"viewers": 32' in get(sink, f"/stats.json?token={TOKEN}")[2]
        for s in socks:
            s.close()
        socks.clear()
        assert wait_until(lambda: sink.viewers == 0 and sink.connections == 0, 10), (sink.viewers, sink.connections)
        assert get(sink, f"/stream.mjpg?token={TOKEN}")[0] == 200, "a viewer gets in again once others left"
    finally:
        for s in socks:
            s.close()
        pub.close()
        sink.close()
    assert wait_until(lambda: not server_threads() and threading.active_count() <= threads, 10), server_threads()
    gc.collect()
    assert open_fds() <= fds + 2, f"file descriptors: {fds} before, {open_fds()} after"


def test_idle_slow_and_stalled_connections_time_out() -> None:
    sink = BrowserSink("127.0.0.1", 0, token=TOKEN, timeout=0.5, max_viewers=2)
    pub = Publisher(sink, fps=30, shape=(480, 640), noise=True)
    try:
        idle = socket.create_connection(("127.0.0.1", sink.port), timeout=5)  # says nothing
        slow = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
        slow.sendall(b"GET /stats.json?tok")  # and never finishes the request line
        stalled = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /stream.mjpg?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # never reads
        start = time.monotonic()
        assert idle.recv(1) == b"" and slow.recv(1) == b"", "closed by the server"
        assert time.monotonic() - start < 4
        assert wait_until(lambda: sink.viewers == 1, 3)
        assert wait_until(lambda: sink.viewers == 0 and sink.connections == 0, 10), "the stalled viewer is dropped"
        for s in (idle, slow, stalled):
            s.close()
    finally:
        pub.close()
        sink.close()


def test_a_viewer_that_hangs_up_while_no_frames_come_is_let_go() -> None:
    with BrowserSink("127.0.0.1", 0, token=TOKEN) as sink:  # nothing is published
        s = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
        s.sendall(f"GET /stream.mjpg?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_until(lambda: sink.viewers == 1, 3)
        s.close()
        assert wait_until(lambda: sink.viewers == 0 and sink.connections == 0, 5)


def raw_request(port: int, head: str) -> tuple[int, bytes, bytes]:
    """Send ``head`` as it is on a fresh connection; the status, response head and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := s.recv(65536)):
            reply += chunk
    head_bytes, _, body = reply.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), head_bytes, body


class Tricklers:
    """``n`` connections that each send one byte of a request every ``period`` s and never finish it (the
    reported attack), in one thread. A connection the server closes is reopened (at most every 0.5 s per
    slot), as an attacker would; ``lifetimes`` holds how long each closed one lasted."""

    def __init__(self, port: int, n: int, period: float, request: bytes) -> None:
        self.port, self.period, self.request = port, period, request
        self.lifetimes: list[float] = []
        self.stop = threading.Event()
        self.sel = selectors.DefaultSelector()
        self.slots: list[dict] = [{"retry": 0.0} for _ in range(n)]
        for slot in self.slots:
            self.open(slot, time.monotonic())
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    @property
    def connected(self) -> int:
        return sum("sock" in slot for slot in self.slots)

    def open(self, slot: dict, now: float) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            slot["retry"] = now + 0.5
            return
        s.setblocking(False)
        slot.update(sock=s, opened=now, sent=0, next=now)
        self.sel.register(s, selectors.EVENT_READ, slot)

    def drop(self, slot: dict, now: float) -> None:
        s = slot.pop("sock")
        self.sel.unregister(s)
        s.close()
        self.lifetimes.append(now - slot["opened"])
        slot["retry"] = now + 0.5

    def loop(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                slot = key.data
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server (an answer would be data: none is expected)
                    self.drop(slot, time.monotonic())
            now = time.monotonic()
            for slot in self.slots:
                if "sock" not in slot:
                    if now >= slot["retry"]:
                        self.open(slot, now)
                elif now >= slot["next"] and slot["sent"] < len(self.request) - 1:  # never the last byte
                    try:
                        slot["sock"].send(self.request[slot["sent"] : slot["sent"] + 1])
                        slot["sent"] += 1
                        slot["next"] = now + self.period
                    except OSError:
                        self.drop(slot, now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for slot in self.slots:
            if "sock" in slot:
                slot["sock"].close()
        self.sel.close()


class StreamReader:
    """Reads an MJPEG stream in a thread and notes when each part arrives."""

    def __init__(self, port: int, path: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", path)
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.arrivals: list[float] = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        marker, tail = b"--" + BOUNDARY.encode(), b""
        try:
            while chunk := self.resp.read1(1 << 20):
                data, tail = tail + chunk, (tail + chunk)[-len(marker) + 1 :]
                self.arrivals.extend([time.monotonic()] * data.count(marker))
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        self.thread.join(timeout=5)
        self.conn.close()


def test_trickling_connections_do_not_lock_out_viewers() -> None:
    """The reported attack on both kinds of view at once, with the default settings: 70 connections per view
    send one byte of a request every 2 s (each byte would restart an idle timer). A viewer's every request is
    answered 200 and its stream keeps delivering, for 20 s: four head deadlines, so every trickler has been
    cut off and come back several times and what the viewer sees is the steady state of the attack. On the
    public view the tricklers show no token, and the token holder polls."""
    local = BrowserSink("127.0.0.1", 0)  # as --serve 127.0.0.1:PORT: no token
    public = BrowserSink("0.0.0.0", 0)  # as --serve 0.0.0.0:PORT: a random token; reached via 127.0.0.1 only
    views = {"local": local, "public": public}
    publishers = [Publisher(local, fps=15), Publisher(public, fps=15)]
    tricklers: list[Tricklers] = []
    streams: list[StreamReader] = []
    soak = 20.0
    try:
        assert local.token is None and public.token, "the two kinds of view"
        head = "GET /stats.json HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + "x" * 64 + "\r\n\r\n"
        tricklers = [Tricklers(view.port, 70, 2.0, head.encode()) for view in views.values()]
        assert wait_until(lambda: all(t.connected == 70 for t in tricklers), 10), [t.connected for t in tricklers]
        time.sleep(1.0)  # the tricklers have begun to trickle
        streams = [
            StreamReader(v.port, "/stream.mjpg" + (f"?token={v.token}" if v.token else "")) for v in views.values()
        ]
        assert [s.status for s in streams] == [200, 200]
        start = time.monotonic()
        polls = 0
        while time.monotonic() - start < soak:
            for name, view in views.items():
                for path in ("stats.json", "frame.jpg"):
                    status, _, _ = get(view, f"/{path}" + (f"?token={view.token}" if view.token else ""))
                    assert status == 200, f"{name} /{path} answered {status} after {time.monotonic() - start:.1f} s"
                    polls += 1
            time.sleep(0.2)
        end = time.monotonic()
        assert polls >= 100
        for name, stream in zip(views, streams, strict=True):
            gaps = np.diff([start, *[t for t in stream.arrivals if start <= t <= end], end])
            assert len(gaps) > soak * 5 and gaps.max() < 2.0, f"{name} stream: {len(gaps)} parts, gap {gaps.max()} s"
        for name, t in zip(views, tricklers, strict=True):
            assert len(t.lifetimes) >= 70 * 2, f"{name}: tricklers cut off {len(t.lifetimes)} times"
            assert max(t.lifetimes) < DEFAULT_TIMEOUT + 2, f"{name}: a trickler lasted {max(t.lifetimes):.1f} s"
    finally:
        for t in tricklers:
            t.close()
        for s in streams:
            s.close()
        for p in publishers:
            p.close()
        local.close()
        public.close()


def trickle_until_closed(s: socket.socket, data: bytes, period: float, limit: float) -> float:
    """Send ``data`` one byte every ``period`` s until the server closes ``s``; the seconds that took
    (``limit`` at most, and the sending never reaches the end of ``data``)."""
    start = time.monotonic()
    for i in itertools.count():
        try:
            s.send(data[i % (len(data) - 1) : i % (len(data) - 1) + 1])
            readable, _, _ = select.select([s], [], [], period)
            if readable and s.recv(1) == b"":
                break
        except OSError:
            break
        if time.monotonic() - start > limit:
            break
    return time.monotonic() - start


def test_a_trickling_connection_is_closed_at_the_head_deadline() -> None:
    """However it trickles, a connection has ``timeout`` seconds to send its request head: from accept, and
    on a kept-alive connection from the end of the previous response. A byte every 0.2 s would hold an
    idle timer of 1 s open forever."""
    deadline, slack = 1.0, 1.0
    with BrowserSink("127.0.0.1", 0, token=TOKEN, timeout=deadline) as sink:
        Publisher(sink).close()
        head = f"GET /stats.json?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'p' * 200}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as fresh:
            took = trickle_until_closed(fresh, head, 0.2, deadline + slack + 2)
        assert deadline - 0.2 <= took <= deadline + slack, f"closed after {took:.2f} s"

        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
        try:
            conn.request("GET", f"/stats.json?token={TOKEN}")
            resp = conn.getresponse()
            assert resp.status == 200 and not resp.will_close and b"frame" in resp.read()
            assert conn.sock is not None
            took = trickle_until_closed(conn.sock, head, 0.2, deadline + slack + 2)
        finally:
            conn.close()
        assert deadline - 0.2 <= took <= deadline + slack, f"kept-alive: closed {took:.2f} s after its response"
        assert wait_until(lambda: sink.connections == 0, 5)

        pub = Publisher(sink, shape=(480, 640), noise=True)  # ~200 kB frames
        try:
            with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as deaf:  # asks, never reads
                deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                request = f"GET /frame.jpg?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                deaf.sendall(request.encode() * 30)  # ~6 MB of answers: more than the socket buffers hold
                start = time.monotonic()
                assert wait_until(lambda: sink.connections == 1, 2)
                assert wait_until(lambda: sink.connections == 0, deadline + slack), "the unsent frame is dropped"
                assert time.monotonic() - start <= deadline + slack
        finally:
            pub.close()


def test_waiting_connections_are_bounded_and_never_push_out_viewers() -> None:
    """Connections that have not sent a request head take no viewer's slot: beyond ``MAX_WAITING`` of
    them the longest waiting is closed, so a flood of silent connections (with a deadline long enough
    not to help) leaves a stream that was admitted playing and lets a new viewer in."""
    sink = BrowserSink("127.0.0.1", 0, token=TOKEN, timeout=30.0, max_viewers=2)
    pub = Publisher(sink, fps=20)
    silent: list[socket.socket] = []
    stream = None
    try:
        stream = StreamReader(sink.port, f"/stream.mjpg?token={TOKEN}")
        assert stream.status == 200
        for _ in range(300):  # more than MAX_WAITING (256)
            silent.append(socket.create_connection(("127.0.0.1", sink.port), timeout=5))
        assert get(sink, f"/stats.json?token={TOKEN}")[0] == 200
        assert get(sink, f"/frame.jpg?token={TOKEN}")[0] == 200
        status, _, body = get(sink, f"/stream.mjpg?token={TOKEN}")
        assert status == 200 and body.startswith(b"--detectorframe")
        before = len(stream.arrivals)
        assert wait_until(lambda: len(stream.arrivals) > before + 5, 5), "the admitted stream still plays"
        assert wait_until(lambda: sink.connections <= browser.MAX_WAITING + 1, 5), sink.connections
        time.sleep(0.2)
        poller = select.poll()  # not select(): descriptors may be above 1024 here
        for s in silent:
            poller.register(s, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}  # a closed socket reads (as b"")
        closed = [s.fileno() in readable for s in silent]
        assert sum(closed) >= 300 - browser.MAX_WAITING and not any(closed[-100:]), "the oldest were closed"
    finally:
        for s in silent:
            s.close()
        if stream is not None:
            stream.close()
        pub.close()
        sink.close()


def test_missing_or_repeated_host_headers_are_refused_on_a_loopback_view() -> None:
    """Only a request with one Host header naming loopback is answered by a token-free loopback view: none
    (an HTTP/1.0 client or a raw socket) or two (whichever comes first) is refused with 400."""
    with BrowserSink("127.0.0.1", 0) as sink:
        Publisher(sink).close()
        assert raw_request(sink.port, "GET /frame.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")[0] == 200
        twice = [("127.0.0.1", "evil.example"), ("localhost", "127.0.0.1"), ("evil.example", "127.0.0.1")]
        for headers in ["", *(f"Host: {a}\r\nHost: {b}\r\n" for a, b in [*twice, ("127.0.0.1", "127.0.0.1")])]:
            for version in ("1.1", "1.0"):
                status, head, body = raw_request(sink.port, f"GET /frame.jpg HTTP/{version}\r\n{headers}\r\n")
                assert status == 400, (headers, version, status)
                assert b"nosniff" in head and b"no-store" in head and b"evil" not in body and b"\xff\xd8" not in body


def test_stream_works_with_the_token_in_headless_chromium() -> None:
    from .test_browser import chromium_driver

    sink = BrowserSink("127.0.0.1", 0, token=TOKEN, title="detector: <b>test</b>")
    pub = Publisher(sink, fps=15)
    driver = None
    try:
        driver = chromium_driver()
        driver.get(sink.url)  # without the token
        assert "access token" in driver.find_element("tag name", "body").text
        driver.get(sink.view_url)
        assert driver.title == "detector: <b>test</b>", "the title is text, not markup"
        view = "return document.getElementById('view').naturalWidth"
        assert wait_until(lambda: driver.execute_script(view) == 128, 20), "the MJPEG stream shows"
        stats = lambda: driver.find_element("id", "stats").text  # noqa: E731
        assert wait_until(lambda: "viewer" in stats(), 20), "view.js runs under the CSP and reads stats.json"
        bg = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(17, 17, 17)", "view.css applies under the CSP"
        assert driver.execute_script("return document.cookie") == "", "the token cookie is HttpOnly"
        (cookie,) = driver.get_cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] == TOKEN
        driver.get(sink.url)  # the cookie now opens the page without the token in the URL
        assert wait_until(lambda: driver.execute_script(view) == 128, 20)
    finally:
        if driver is not None:
            driver.quit()
        pub.close()
        sink.close()


def test_cli_token_from_the_environment_and_bad_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from detector.cli import main

    run = ["-q", "run", str(need(VIDEO)), "--model", str(TORCHSCRIPT), "--max-frames", "2"]
    monkeypatch.setenv("DETECTOR_SERVE_TOKEN", "short")
    assert main([*run, "--serve", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --serve-token must be") and err.count("\n") == 1 and "short" not in err
    assert main([*run, "--serve-token", TOKEN]) == 2 and "add --serve" in capsys.readouterr().err
    assert main([*run, "--serve", "0", "--max-viewers", "0"]) == 2
    assert "--max-viewers must be at least 1" in capsys.readouterr().err

    monkeypatch.setenv("DETECTOR_SERVE_TOKEN", TOKEN)
    seen: list[int] = []
    write = BrowserSink.write

    def checked_write(self: BrowserSink, frame: np.ndarray, stats: dict | None = None) -> None:
        write(self, frame, stats)
        if not seen:  # while the run is serving its first frame
            seen.extend(get(self, p)[0] for p in ("/frame.jpg", f"/frame.jpg?token={TOKEN}"))
            seen.append(self.max_viewers)

    monkeypatch.setattr(BrowserSink, "write", checked_write)
    assert main([*run, "--serve", "127.0.0.1:0", "--max-viewers", "3"]) == 0
    out, err = capsys.readouterr()
    assert seen == [401, 200, 3]
    urls = [line for line in out.splitlines() if line.startswith("live view: ")]
    assert len(urls) == 1 and urls[0].startswith("live view: http://127.0.0.1:")
    assert urls[0].endswith(f"/?token={TOKEN}")
    assert out.count(TOKEN) == 1 and TOKEN not in err, "the token is printed once, in the URL, and nowhere else"


class GridPublisher:
    """Feeds every source of a grid BrowserSink its own frames (source i's pixels are i * 60)."""

    def __init__(self, sink: BrowserSink, names: list[str], fps: float = 20.0) -> None:
        self.sink, self.names, self.period = sink, names, 1.0 / fps
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        i = 0
        while not self.stop.is_set():
            for k, name in enumerate(self.names):
                self.sink.write(np.full((48, 64, 3), k * 60, np.uint8), {"frame": i}, name)
            i += 1
            self.stop.wait(self.period)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def read_parts(port: int, path: str, n: int) -> list[tuple[dict[str, str], bytes]]:
    """The first ``n`` parts of a multipart stream, as (part headers, JPEG bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        parts = []
        while len(parts) < n:
            line = resp.fp.readline()
            if line.strip() != f"--{BOUNDARY}".encode():
                continue
            headers = {}
            while (line := resp.fp.readline().strip()) != b"":
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            parts.append((headers, resp.fp.read(int(headers["content-length"]))))
        return parts
    finally:
        conn.close()


def test_a_grid_serves_each_source_and_guards_every_stream_alike() -> None:
    import cv2

    names = ["door", "yard", "gate"]
    # a long write timeout: the held streams below are not read, and must keep their slots however slow CI is
    sink = BrowserSink("127.0.0.1", 0, token=TOKEN, timeout=60.0, max_viewers=3, sources=names)
    pub = GridPublisher(sink, names)
    try:
        q = f"?token={TOKEN}"
        # the token is needed for every source's stream and frame, as for a single view
        for path in ("/grid.mjpg", "/stream/door.mjpg", "/frame/yard.jpg", "/stats.json", "/grid.js"):
            assert get(sink, path)[0] == 401, path
        assert get(sink, "/stream/nobody.mjpg" + q)[0] == 404
        assert get(sink, "/stream.mjpg" + q)[0] == 404, "a grid has no unnamed stream"
        status, headers, page = get(sink, "/" + q)
        assert status == 200 and all(f'data-source="{n}"' in page.decode() for n in names)
        csp = {d.split()[0]: d.split()[1:] for d in headers["content-security-policy"].split("; ")}
        assert csp["img-src"] == ["'self'", "blob:"] and csp["script-src"] == ["'self'"], csp
        assert "blob:" not in get(sink, "/stats.json" + q)[1]["content-security-policy"], "the page only"
        assert get(sink, "/", {"Host": "evil.example"})[0] in (401, 403), "no token, no page"
        # the grid's one stream carries every source, each part naming it, with that source's own frame
        parts = read_parts(sink.port, "/grid.mjpg" + q, 12)
        seen = {}
        for headers, jpeg in parts:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            seen[headers["x-source"]] = float(image.mean())
        assert set(seen) == set(names)
        for k, name in enumerate(names):
            assert abs(seen[name] - k * 60) < 3, (name, seen[name])
        # a source's own stream has its frames only
        for headers, jpeg in read_parts(sink.port, "/stream/gate.mjpg" + q, 3):
            assert "x-source" not in headers
            assert abs(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).mean() - 120) < 3
        # health without a frame, per source, in /stats.json
        sink.update({"state": "reconnecting", "last_error": "<b>x</b>"}, "yard")
        stats = json.loads(get(sink, "/stats.json" + q)[2])
        assert set(stats["sources"]) == set(names) and stats["sources"]["yard"]["state"] == "reconnecting"
        # the viewer cap counts streams of every kind together (the streams read above are let go first)
        assert wait_until(lambda: sink.viewers == 0, 30), f"{sink.viewers} streams still held after hanging up"
        held = []
        for path in ("/grid.mjpg", "/stream/door.mjpg", "/stream/yard.mjpg"):
            conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
            conn.request("GET", path + q)
            resp = conn.getresponse()  # a "Connection: close" response owns the socket: keep it, or it closes
            assert resp.status == 200
            held.append((conn, resp))
        assert wait_until(lambda: sink.viewers == 3, 30), f"{sink.viewers} viewers, not the 3 held"
        assert get(sink, "/stream/gate.mjpg" + q)[0] == 503
        assert get(sink, "/grid.mjpg" + q)[0] == 503
        for conn, resp in held:
            resp.close()
            conn.close()
        assert wait_until(lambda: sink.viewers == 0, 10), "streams give their slots back"
    finally:
        pub.close()
        sink.close()


def test_grid_source_names_are_checked() -> None:
    for names in (["a", "a"], ["<script>"], ["../x"], []):
        with pytest.raises(SinkError, match="source names"):
            BrowserSink("127.0.0.1", 0, sources=names)
