"""Browser live view: a small HTML page and an MJPEG stream of annotated frames over HTTP.

The pipeline publishes each frame once (JPEG-encoded in the writer thread)
into a single "latest frame" slot; every viewer has its own server thread that
sends the newest frame it has not sent yet. A slow or stalled viewer therefore
skips frames and never holds up the pipeline or the other viewers.
"""

from __future__ import annotations

import errno
import html
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from ..errors import SinkError
from .base import Closeable

log = logging.getLogger(__name__)
BOUNDARY = "detectorframe"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }}
 header {{ padding: 8px 12px; display: flex; gap: 16px; align-items: baseline; }}
 h1 {{ font-size: 16px; margin: 0; }}
 #stats {{ font-variant-numeric: tabular-nums; color: #9c9; }}
 img {{ display: block; max-width: 100vw; max-height: calc(100vh - 40px); margin: 0 auto; }}
</style></head>
<body><header><h1>{title}</h1><span id="stats">waiting for frames...</span></header>
<img id="view" src="/stream.mjpg" alt="live detections">
<script>
async function poll() {{
  try {{
    const s = await (await fetch('/stats.json', {{cache: 'no-store'}})).json();
    document.getElementById('stats').textContent = `frame ${{s.frame}} · ${{s.fps.toFixed(1)}} fps · ` +
      `latency ${{s.latency_ms.toFixed(0)}} ms · ${{s.detections}} objects · ${{s.viewers}} viewer(s)`;
  }} catch (e) {{ document.getElementById('stats').textContent = 'disconnected'; }}
}}
setInterval(poll, 500); poll();
</script></body></html>
"""


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


class BrowserSink(Closeable):
    """Serves ``/`` (page), ``/stream.mjpg``, ``/frame.jpg`` and ``/stats.json``."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8080, *, title: str = "detector", quality: int = 80
    ) -> None:
        self.title = title
        self.quality = quality
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._stats: dict[str, Any] = {"frame": 0, "fps": 0.0, "latency_ms": 0.0, "detections": 0}
        self._closed = False
        self.viewers = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), fmt % args)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(PAGE.format(title=html.escape(sink.title)).encode(), "text/html; charset=utf-8")
                elif path == "/stats.json":
                    self._send(json.dumps({**sink.stats, "viewers": sink.viewers}).encode(), "application/json")
                elif path == "/frame.jpg":
                    jpeg = sink.wait_frame(-1, timeout=5.0)[1]
                    if jpeg is None:
                        self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                    else:
                        self._send(jpeg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)

            def _send(self, body: bytes, ctype: str) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.close_connection = True
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                with sink._cond:
                    sink.viewers += 1
                seq = -1
                try:
                    while True:
                        seq, jpeg = sink.wait_frame(seq, timeout=1.0)
                        if sink._closed:
                            return
                        if jpeg is None:
                            continue
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg + b"\r\n"
                        )  # fmt: skip
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                    return  # the viewer went away
                finally:
                    with sink._cond:
                        sink.viewers -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            self._server = Server((host, port), Handler)
        except socket.gaierror:
            raise SinkError(f"--serve host {host!r} cannot be resolved; use 127.0.0.1 or 0.0.0.0") from None
        except OSError as exc:
            raise SinkError(_bind_error(host, port, exc)) from None
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="detector-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

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
        self._thread.join(timeout=5)
