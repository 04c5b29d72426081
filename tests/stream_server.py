"""A test MJPEG-over-HTTP camera on 127.0.0.1: real video frames as multipart/x-mixed-replace at a
given rate, which OpenCV's FFmpeg backend reads as a live stream.

It can be told to stall (keep connections open and send nothing for N s), to drop every
connection, and to refuse connections (not listening, on a port that stays reserved for it).
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

BOUNDARY = "frame"


def jpeg_frames(video: Path, n: int = 30, size: tuple[int, int] | None = (384, 288)) -> list[bytes]:
    """The first ``n`` frames of ``video`` as JPEG bytes (resized to ``size``, width x height)."""
    cap = cv2.VideoCapture(str(video))
    out = []
    try:
        while len(out) < n:
            ok, frame = cap.read()
            if not ok:
                break
            if size is not None:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    finally:
        cap.release()
    if not out:
        raise RuntimeError(f"no frame decoded from {video}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MjpegServer:
    """``url`` serves ``frames`` at ``fps`` to every client; ``start()`` / ``stop()`` listen or refuse."""

    def __init__(self, frames: list[bytes], fps: float = 10.0, port: int | None = None, *, start: bool = True) -> None:
        self.frames, self.period = frames, 1.0 / fps
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self.sent = 0
        self._stall_until = 0.0
        self._generation = 0
        """Bumped by :meth:`drop`: a connection of an older generation closes."""
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[threading.Thread] = set()
        if start:
            self.start()

    # -- control ------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on this port."""
        if self._server is not None:
            return
        self._closing.clear()
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-mjpeg-server", daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Close every connection and stop listening: new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()  # joins the connection threads (they see _closing within a frame)
        if self._thread is not None:
            self._thread.join(5)
        for handler in list(self._handlers):  # daemon threads: server_close() does not join them
            handler.join(5)

    def stall(self, seconds: float) -> None:
        """Keep every connection open but send nothing for ``seconds``."""
        self._stall_until = time.monotonic() + seconds

    def drop(self) -> None:
        """Close every open connection (the server keeps listening)."""
        self._generation += 1

    def __enter__(self) -> MjpegServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                generation, i, next_t = owner._generation, 0, time.monotonic()
                owner._handlers.add(threading.current_thread())
                try:
                    while not owner._closing.is_set() and generation == owner._generation:
                        if time.monotonic() < owner._stall_until:
                            time.sleep(0.02)
                            next_t = time.monotonic()
                            continue
                        jpeg = owner.frames[i % len(owner.frames)]
                        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        self.wfile.write(head.encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        owner.sent += 1
                        i += 1
                        next_t = max(next_t + owner.period, time.monotonic() - owner.period)  # no burst after a lag
                        time.sleep(max(0.0, next_t - time.monotonic()))
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
                finally:
                    owner._handlers.discard(threading.current_thread())
                self.close_connection = True

        return Handler


def solid_frames(n: int = 4, size: tuple[int, int] = (64, 48)) -> list[bytes]:
    """Tiny JPEGs of flat grey levels, for tests that need no real content."""
    return [cv2.imencode(".jpg", np.full((size[1], size[0], 3), 40 * i, np.uint8))[1].tobytes() for i in range(n)]
