"""Pipeline fps with the live view's viewer cap full vs no viewers.

The real pipeline (reader thread decoding vtest.avi, the real TorchScript detector,
the writer thread annotating and JPEG-encoding every frame into the live view, as
``detector run --serve`` does) runs ``--frames`` frames with no viewer, then with
``--viewers`` (default: the cap, 32) MJPEG viewers reading as fast as they can;
rounds interleave the two (order alternating) and the table gives medians. The
viewers run in a separate process (one thread, non-blocking sockets), as they
would on other machines, so only the server's own cost lands in this process.
All traffic is on 127.0.0.1, with an access token, as beyond loopback.

    .venv/bin/python benchmarks/live_view_load.py [--frames 150] [--rounds 3] [--viewers 32]
"""

from __future__ import annotations

import argparse
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path


def drain(port: int, n: int, token: str, seconds: float) -> None:
    """Viewer process: ``n`` MJPEG streams read as fast as they come; prints 'ready', then totals."""
    sel = selectors.DefaultSelector()
    request = f"GET /stream.mjpg?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    heads: dict[socket.socket, bytes] = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        heads[s] = b""
    for s in heads:  # every stream answered 200 before the run starts
        while b"\r\n" not in heads[s]:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("a viewer was refused or closed")
            heads[s] += chunk
        if not heads[s].startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"viewer refused: {heads[s].splitlines()[0]!r}")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    sel.register(sys.stdin, selectors.EVENT_READ)  # the parent closes our stdin to stop us
    total, boundaries, deadline = 0, 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            if key.fileobj is sys.stdin:
                if sys.stdin.readline() == "":
                    deadline = 0.0
                continue
            try:
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                continue
            total += len(data)
            boundaries += data.count(b"--detectorframe")
    print(f"{total} {boundaries}", flush=True)
    for key in list(sel.get_map().values()):
        if key.fileobj is not sys.stdin:
            key.fileobj.close()  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--viewers", type=int, help="default: the live view's cap (32)")
    args = ap.parse_args()

    import secrets
    import statistics

    from common import TORCHSCRIPT, VIDEO, machine

    from detector import Detector, load_config
    from detector.io.browser import DEFAULT_MAX_VIEWERS, BrowserSink
    from detector.io.sources import Frame
    from detector.pipeline import run_pipeline
    from detector.render import annotate
    from detector.structures import Detections

    viewers = args.viewers or DEFAULT_MAX_VIEWERS
    detector = Detector.from_config(load_config(None, {"model": str(TORCHSCRIPT)}))
    token = secrets.token_urlsafe(24)
    fps: dict[str, list[float]] = {"none": [], "full": []}
    cpu: dict[str, list[float]] = {"none": [], "full": []}
    delivered: list[float] = []
    with BrowserSink("127.0.0.1", 0, token=token, max_viewers=max(viewers, DEFAULT_MAX_VIEWERS)) as sink:

        def render(frame: Frame, dets: Detections) -> None:
            annotate(frame.image, dets, copy=False)

        def publish(frame: Frame, dets: Detections) -> None:
            sink.write(frame.image, {"frame": frame.index, "detections": len(dets)})

        def one_run(frames: int) -> tuple[float, float]:
            """(fps, CPU ms per frame of this whole process: pipeline and server threads)."""
            from detector.io import open_source

            cpu = time.process_time()
            with open_source(str(VIDEO)) as source:
                stats = run_pipeline(source, detector, publish, render=render, max_frames=frames)
            return stats.frames / stats.seconds, (time.process_time() - cpu) * 1000 / stats.frames

        one_run(20)  # warm-up
        for r in range(args.rounds):
            for mode in ("none", "full") if r % 2 == 0 else ("full", "none"):
                proc = None
                if mode == "full":
                    proc = subprocess.Popen(
                        [sys.executable, str(Path(__file__)), "--drain", str(sink.port), str(viewers), token],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                    deadline = time.monotonic() + 10
                    while sink.viewers < viewers and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert sink.viewers == viewers, f"{sink.viewers} viewers connected, wanted {viewers}"
                try:
                    value, cpu_ms = one_run(args.frames)
                finally:
                    if proc is not None:
                        out, _ = proc.communicate("", timeout=30)  # closing stdin stops the viewers
                        _, frames_seen = map(int, out.split()[-2:])
                        delivered.append(frames_seen / viewers / args.frames)
                fps[mode].append(value)
                cpu[mode].append(cpu_ms)
                print(
                    f"round {r + 1} {mode:>4}: {value:.2f} fps, {cpu_ms:.0f} CPU ms/frame", file=sys.stderr, flush=True
                )
                deadline = time.monotonic() + 10
                while (sink.viewers or sink.connections) and time.monotonic() < deadline:
                    time.sleep(0.05)

    med = {mode: (statistics.median(fps[mode]), statistics.median(cpu[mode])) for mode in fps}
    print(f"# live view load, {detector.name} on vtest.avi, {args.frames} frames x {args.rounds} interleaved rounds, "
          f"{machine()}")  # fmt: skip
    print("| viewers | pipeline fps, median (rounds) | vs none | CPU ms/frame, median (rounds) | vs none |")
    print("|---:|---:|---:|---:|---:|")
    for mode, label in (("none", "0"), ("full", f"{viewers} (the cap)")):
        (f, c), (f0, c0) = med[mode], med["none"]
        vs_f, vs_c = ("", "") if mode == "none" else (f"{(f / f0 - 1) * 100:+.1f}%", f"{(c / c0 - 1) * 100:+.1f}%")
        print(f"| {label} | {f:.2f} ({' '.join(f'{x:.2f}' for x in fps[mode])}) | {vs_f} "
              f"| {c:.0f} ({' '.join(f'{x:.0f}' for x in cpu[mode])}) | {vs_c} |")  # fmt: skip
    paired = [full / none for full, none in zip(fps["full"], fps["none"], strict=True)]
    print(f"\nper round, fps with the cap full / without: {' '.join(f'{x:.2f}' for x in paired)}; "
          f"median {statistics.median(paired):.3f}")  # fmt: skip
    print(f"each viewer received {statistics.median(delivered) * 100:.0f}% of the frames (median over rounds)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--drain":
        drain(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], seconds=600)
    else:
        main()
