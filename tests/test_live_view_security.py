"""The live view is safe to expose: token, caps, timeouts, headers -- against a real server on 127.0.0.1.

A token asked for explicitly makes a loopback server behave as one bound beyond loopback, so
nothing here listens on, or sends to, any other address. Every loop is bounded in count and time.
"""

from __future__ import annotations

import gc
import hmac
import http.client
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from detector.errors import SinkError
from detector.io.browser import BrowserSink, access_token, check_token

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
        assert {d.split()[-1] for d in csp.split("; ") if d.startswith(("script", "style", "img", "connect"))} == {
            "'self'"
        }
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
