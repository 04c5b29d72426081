"""Memory over a long multi-source run: ``detector run`` on N live MJPEG cameras on loopback (real frames of
vtest.avi, paced at ``--fps``), with ``--serve`` (one client reading the grid's stream throughout) and
``--out`` (a video and JSON Lines file per source), for ``--minutes``; the process's RSS sampled every
few seconds. Then Ctrl-C, and every output is checked complete. Answers issue 20's "memory flat over a
10-minute, 8-source run": the RSS slope over the run's last 80% and its growth after the first minute.

    .venv/bin/python benchmarks/multi_soak.py [--sources 8] [--minutes 10] [--fps 10] [--model d2go]
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
from common import ROOT, machine

sys.path.insert(0, str(ROOT))
import detector  # noqa: E402
from tests.stream_server import MjpegServer, jpeg_frames  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def health(port: int) -> dict[str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/stats.json")
        return json.loads(conn.getresponse().read())["sources"]
    finally:
        conn.close()


def grid_reader(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    """A viewer of the grid for the whole run: reads /grid.mjpg and counts the parts per source."""
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/grid.mjpg")
            resp = conn.getresponse()
            source = None
            while not stop.is_set():
                line = resp.fp.readline()
                if not line:
                    break
                if line.lower().startswith(b"x-source:"):
                    source = line.split(b":", 1)[1].strip().decode()
                elif line.lower().startswith(b"content-length:"):
                    resp.fp.readline()
                    resp.fp.read(int(line.split(b":", 1)[1]))
                    counts[source or "?"] = counts.get(source or "?", 0) + 1
            conn.close()
        except OSError:
            time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--model", default="d2go")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    args = ap.parse_args()
    print(machine())
    frames = jpeg_frames(detector.DEMO_CLIP, n=60, size=(640, 480))
    servers = [MjpegServer(frames, fps=args.fps) for _ in range(args.sources)]
    names = [f"cam{i}" for i in range(args.sources)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        specs = [f"{n}={s.url}" for n, s in zip(names, servers, strict=True)]
        cmd = [sys.executable, "-m", "detector", "-q", "run", *specs, "--model", args.model,
               "--serve", "127.0.0.1:0", "--out", str(out), "--stats", str(Path(tmp) / "s.json")]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().split(": ", 1)[1]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        stop, counts = threading.Event(), {}
        reader = threading.Thread(target=grid_reader, args=(port, stop, counts), daemon=True)
        reader.start()
        start, samples = time.monotonic(), []
        while (t := time.monotonic() - start) < args.minutes * 60:
            samples.append((t, rss_mb(proc.pid)))
            if len(samples) % 12 == 1:
                now = health(port)
                done = sum(h.get("frames", 0) for h in now.values())
                states = sorted({h.get("state", "?") for h in now.values()})
                print(f"{t / 60:5.1f} min  RSS {samples[-1][1]:7.1f} MB  detected {done:6d} frames in all  "
                      f"states {','.join(states)}", flush=True)  # fmt: skip
            time.sleep(args.every)
        last = health(port)
        stop.set()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        for server in servers:
            server.stop()
        complete = 0
        for name in names:
            lines = len((out / f"{name}.jsonl").read_text().splitlines())
            cap = cv2.VideoCapture(str(out / f"{name}.mp4"))
            complete += int(cap.isOpened() and cap.read()[0] and lines > 0)
            cap.release()
    tail = [(t, r) for t, r in samples if t >= 0.2 * args.minutes * 60]
    n = len(tail)
    mt, mr = sum(t for t, _ in tail) / n, sum(r for _, r in tail) / n
    slope = sum((t - mt) * (r - mr) for t, r in tail) / max(sum((t - mt) ** 2 for t, _ in tail), 1e-9) * 60
    after_1 = next((r for t, r in samples if t >= 60), samples[-1][1])
    fps = sum(h.get("frames", 0) for h in last.values()) / (args.minutes * 60)
    print(f"{args.sources} sources at {args.fps:g} fps, {args.model}, {args.minutes:g} min, exit {proc.returncode}")
    print(f"RSS: at 1 min {after_1:.1f} MB, at end {samples[-1][1]:.1f} MB, max {max(r for _, r in samples):.1f} MB; "
          f"slope over the last 80% {slope:+.2f} MB/min")  # fmt: skip
    print(f"detected {fps:.2f} frames/s in all (mean over the run); grid viewer got {sum(counts.values())} parts; "
          f"outputs complete and playable: {complete} of {args.sources}")  # fmt: skip
    if proc.returncode != 130:
        print(err)


if __name__ == "__main__":
    main()
