"""Browser live view: a small HTML page and an MJPEG stream of annotated frames over HTTP.

The pipeline publishes each frame once (JPEG-encoded in the writer thread)
into a single "latest frame" slot; every viewer has its own server thread that
sends the newest frame it has not sent yet. A slow or stalled viewer therefore
skips frames and never holds up the pipeline or the other viewers.

Safe to expose: beyond loopback every request needs the access token (a random
one unless given), compared in constant time; concurrent streams and connections
(each one a server thread) are capped, and the rest are answered 503 at once;
idle or stalled connections time out; every response carries headers that stop
caching, sniffing, framing, referrers and any script or style not from the page.
"""

from __future__ import annotations

import errno
import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
import select
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from ..errors import SinkError
from .base import Closeable

log = logging.getLogger(__name__)
BOUNDARY = "detectorframe"
TOKEN_ENV = "DETECTOR_SERVE_TOKEN"
NO_TOKEN = "none"
DEFAULT_MAX_VIEWERS = 32
DEFAULT_TIMEOUT = 10.0
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # safe in a URL and a cookie as is
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]*")

# Sent with every response, errors included.
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/view.css">
<script src="/view.js" defer></script></head>
<body><header><h1>{title}</h1><span id="stats">waiting for frames...</span></header>
<img id="view" src="/stream.mjpg" alt="live detections">
</body></html>
"""

STYLE = """body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }
header { padding: 8px 12px; display: flex; gap: 16px; align-items: baseline; }
h1 { font-size: 16px; margin: 0; }
#stats { font-variant-numeric: tabular-nums; color: #9c9; }
img { display: block; max-width: 100vw; max-height: calc(100vh - 40px); margin: 0 auto; }
"""

SCRIPT = """async function poll() {
  try {
    const s = await (await fetch('/stats.json', {cache: 'no-store'})).json();
    document.getElementById('stats').textContent = `frame ${s.frame} · ${s.fps.toFixed(1)} fps · ` +
      `latency ${s.latency_ms.toFixed(0)} ms · ${s.detections} objects · ${s.viewers} viewer(s)`;
  } catch (e) { document.getElementById('stats').textContent = 'disconnected'; }
}
setInterval(poll, 500); poll();
"""


def _plain_response(status: HTTPStatus, text: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete ``Connection: close`` response, for the accept loop to send without a thread."""
    body = text.encode()
    head = [f"HTTP/1.1 {status.value} {status.phrase}", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close",
            *(f"{name}: {value}" for name, value in extra + SECURITY_HEADERS)]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


BUSY = _plain_response(
    HTTPStatus.SERVICE_UNAVAILABLE, "too many connections to this live view; try again later\n", (("Retry-After", "5"),)
)


def parse_address(spec: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); the host defaults to 127.0.0.1."""
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SinkError(f"--serve takes PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080), got {spec!r}")
    return host, int(port)


def check_address(host: str, port: int) -> None:
    """Fail now, with one line, if ``host:port`` cannot be served (unknown host, address not on this
    machine, port in use), before the model loads or any output is opened."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise SinkError(
            f"--serve host {host!r} cannot be resolved; use an address of this machine such as 127.0.0.1 or 0.0.0.0"
        ) from None
    family, _, _, _, addr = infos[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
    except OSError as exc:
        raise SinkError(_bind_error(host, port, exc)) from None
    finally:
        probe.close()


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; pick a free port with --serve PORT"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--serve address {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"no permission to serve on port {port} (ports below 1024 need root); pick a port such as 8080"
    return f"cannot serve on {host}:{port} ({exc.strerror}); pick another --serve address"


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine's loopback interface (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_token(token: str | None) -> None:
    """Refuse, in one line that does not echo it, a token that is neither ``none`` nor a usable secret."""
    if token is None or token.lower() == NO_TOKEN or _TOKEN_RE.fullmatch(token):
        return
    raise SinkError(
        "--serve-token must be 'none' or 16 to 256 letters, digits, '-', '_', '.' or '~' "
        "(leave it out for a random one)"
    )


def access_token(host: str, given: str | None = None) -> str | None:
    """The token the live view on ``host`` requires, or None for none.

    ``given`` is a token, ``"none"`` (no token; warned about beyond loopback), or None: a
    random token when ``host`` is reachable from other machines, none on loopback.
    """
    if given is not None:
        check_token(given)
        if given.lower() != NO_TOKEN:
            return given
        if not is_loopback(host):
            log.warning("the live view on %s has no access token (--serve-token none): anyone who can reach "
                        "the port sees the video and its stats", host)  # fmt: skip
        return None
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def _redact(text: str) -> str:
    return _TOKEN_IN_URL.sub(r"\1***", text)


def _host_is_local(header: str | None) -> bool:
    """Whether a Host header names loopback: a page from any other name is a DNS-rebinding attempt."""
    if not header:
        return True  # HTTP/1.0 clients; browsers always send Host
    name = header.strip()
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _peer_closed(conn: socket.socket) -> bool:
    """Whether the viewer hung up (checked while no frame comes, when no write would notice)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _turn_away(conn: socket.socket) -> None:
    """Answer 503 from the accept loop without blocking it and without a thread."""
    try:
        conn.setblocking(False)
        try:
            conn.recv(65536)  # what has arrived: closing with unread data would reset the connection
        except OSError:
            pass
        conn.send(BUSY)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    """A thread per connection, as ThreadingHTTPServer, but at most ``max_connections`` of them: one
    more is answered 503 by the accept loop. ``close_connections`` ends them all promptly."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections waits to be accepted (and answered), not SYN-retried

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 family: socket.AddressFamily, max_connections: int) -> None:  # fmt: skip
        self.address_family = family
        self.max_connections = max_connections
        self._open: dict[Any, threading.Thread] = {}
        self._open_lock = threading.Lock()
        self._warned_at = -1e9
        super().__init__(address, handler)

    def warn_full(self, what: str) -> None:
        """Tell the operator a cap is reached, at most once a minute (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("live view: %s, the most it serves; answering 503 to more (--max-viewers raises it)", what)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = len(self._open) >= self.max_connections
            if not full:
                thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                          name="detector-http-viewer", daemon=True)  # fmt: skip
                self._open[request] = thread
        if full:
            self.warn_full(f"{self.max_connections} connections")
            _turn_away(request)
            self.shutdown_request(request)
            return
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A viewer that goes away mid-response is normal: logged at debug, not printed to stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("live view: connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("live view: error serving %s", client_address[0])

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    @property
    def connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def close_connections(self, timeout: float) -> None:
        with self._open_lock:
            items = list(self._open.items())
        for conn, _ in items:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading or writing it
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in items:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))


class BrowserSink(Closeable):
    """Serves ``/`` (page), ``/stream.mjpg``, ``/frame.jpg`` and ``/stats.json`` (and the page's
    ``/view.js`` and ``/view.css``).

    ``token``: None for a random one when ``host`` is not loopback (none on loopback), ``"none"``
    for no token, or the token to require. ``max_viewers`` caps concurrent streams, and
    ``2 * max_viewers`` caps connections (a browser holds the stream and one for the page and its
    stats). ``timeout`` closes a connection idle or stalled that long.
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
    ) -> None:
        if max_viewers < 1:
            raise SinkError(f"--max-viewers must be at least 1, got {max_viewers}")
        self.title = title
        self.quality = quality
        self.max_viewers = max_viewers
        self.timeout = timeout
        self.token = access_token(host, token)
        self._token_bytes = self.token.encode() if self.token else b""
        self._check_host = self.token is None and is_loopback(host)
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._stats: dict[str, Any] = {"frame": 0, "fps": 0.0, "latency_ms": 0.0, "detections": 0}
        self._closed = False
        self.viewers = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            default_request_version = "HTTP/1.1"  # so that even a malformed request line gets the headers below
            timeout = sink.timeout  # socket timeout: an idle or stalled connection is closed

            def version_string(self) -> str:
                return "detector"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), _redact(fmt % args))

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """http.server's errors (bad request line, unsupported method, timeouts) as plain text
                that quotes nothing the client sent."""
                log.debug("%s %d %s", self.address_string(), code, _redact(message or ""))
                status = HTTPStatus(code)
                self.close_connection = True
                if status.value < 200 or status in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
                    self.send_response(status)
                    self.end_headers()
                    return
                self._text(status, f"{status.value} {status.phrase}\n", (("Connection", "close"),))

            def end_headers(self) -> None:
                for name, value in SECURITY_HEADERS:
                    self.send_header(name, value)
                super().end_headers()

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlsplit(self.path)
                path = url.path
                refused = sink._refusal(url.query, self.headers.get("Cookie"), self.headers.get("Host"))
                if refused is not None:
                    self._text(*refused)
                    return
                if path in ("/", "/index.html"):
                    cookie = sink._cookie() if sink.token and "token=" in url.query else None
                    self._send(PAGE.format(title=html.escape(sink.title)).encode(), "text/html; charset=utf-8",
                               (("Set-Cookie", cookie),) if cookie else ())  # fmt: skip
                elif path == "/view.js":
                    self._send(SCRIPT.encode(), "text/javascript; charset=utf-8")
                elif path == "/view.css":
                    self._send(STYLE.encode(), "text/css; charset=utf-8")
                elif path == "/stats.json":
                    self._send(json.dumps({**sink.stats, "viewers": sink.viewers}).encode(), "application/json")
                elif path == "/frame.jpg":
                    jpeg = sink.wait_frame(-1, timeout=5.0)[1]
                    if jpeg is None:
                        self._text(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet\n")
                    else:
                        self._send(jpeg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._text(HTTPStatus.NOT_FOUND, "not found\n")  # never echoes the path

            def _send(self, body: bytes, ctype: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _text(self, status: HTTPStatus, text: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.close_connection = True
                with sink._cond:
                    full = sink.viewers >= sink.max_viewers
                    if not full:
                        sink.viewers += 1
                if full:
                    sink._server.warn_full(f"{sink.max_viewers} viewers")
                    self._text(HTTPStatus.SERVICE_UNAVAILABLE,
                               f"this live view has its {sink.max_viewers} viewers; try again later\n",
                               (("Retry-After", "5"), ("Connection", "close")))  # fmt: skip
                    return
                seq = -1
                try:
                    self.send_response(HTTPStatus.OK)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    while True:
                        seq, jpeg = sink.wait_frame(seq, timeout=1.0)
                        if sink._closed:
                            return
                        if jpeg is None:
                            if _peer_closed(self.connection):
                                return
                            continue
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg + b"\r\n"
                        )  # fmt: skip
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                    return  # the viewer went away, or stalled longer than the timeout
                finally:
                    with sink._cond:
                        sink.viewers -= 1

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server((host, port), Handler, family=family, max_connections=2 * max_viewers)
        except socket.gaierror:
            raise SinkError(f"--serve host {host!r} cannot be resolved; use 127.0.0.1 or 0.0.0.0") from None
        except OSError as exc:
            raise SinkError(_bind_error(host, port, exc)) from None
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._cookie_name = f"detector_token_{self.port}"  # cookies ignore ports: one name per live view
        self._thread = threading.Thread(target=self._server.serve_forever, name="detector-http", daemon=True)
        self._thread.start()

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
    def connections(self) -> int:
        """Open HTTP connections (each served by one thread)."""
        return self._server.connections

    def _refusal(self, query: str, cookies: str | None, host: str | None) -> tuple[HTTPStatus, str] | None:
        """Why a request is refused (status, text), or None to serve it."""
        if self.token is None:
            if self._check_host and not _host_is_local(host):
                return HTTPStatus.FORBIDDEN, "this live view answers only to localhost and loopback addresses\n"
            return None
        given = parse_qs(query).get("token", [None])[-1]
        if given is None:
            for part in (cookies or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == self._cookie_name:
                    given = value
        if given is None:
            return HTTPStatus.UNAUTHORIZED, "this live view needs its access token: open the URL it printed at start\n"
        if not hmac.compare_digest(given.encode(), self._token_bytes):
            return HTTPStatus.FORBIDDEN, "wrong access token for this live view\n"
        return None

    def _cookie(self) -> str:
        return f"{self._cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"

    @property
    def stats(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._stats)

    def wait_frame(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest frame newer than ``after`` (waiting up to ``timeout``), as (seq, jpeg)."""
        with self._cond:
            if self._seq <= after and not self._closed:
                self._cond.wait(timeout)
            return (self._seq, self._jpeg) if self._seq > after else (after, None)

    def write(self, frame: np.ndarray, stats: dict[str, Any] | None = None) -> None:
        """Publish a frame; never blocks on viewers."""
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise SinkError("cannot encode the frame as JPEG")
        with self._cond:
            self._jpeg = buf.tobytes()
            self._seq += 1
            if stats:
                self._stats.update(stats)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections(timeout=5)
        self._thread.join(timeout=5)
