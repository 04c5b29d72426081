"""Video encoding cost per frame: ``VideoFileSink`` with H.264 (libx264 via PyAV) against
OpenCV's mp4v and MJPG, on real frames (../shared/data/video/vtest.avi, 768x576) decoded
beforehand, so only conversion + encoding + muxing is timed.

Per codec: wall and CPU ms per frame (CPU: the process's user+sys time, libx264's own
threads included), file size, PSNR of the decoded file against the input; and the wall
time again while another thread runs pure Python (the worst case for the GIL: each of the
encoder's GIL releases may wait up to the 5 ms switch interval to get it back).

    .venv/bin/python benchmarks/encode.py [--frames 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from common import decode, machine, median

from detector.io import VideoFileSink

CASES = {"H.264 (.mp4)": ("x.mp4", "h264"), "mp4v (.mp4)": ("x.mp4", "mp4v"), "MJPG (.avi)": ("x.avi", "auto")}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def encode(frames: list[np.ndarray], path: Path, codec: str) -> tuple[float, float]:
    """Wall and CPU seconds to write ``frames`` (opening and finalising the file included)."""
    h, w = frames[0].shape[:2]
    start, cpu = time.perf_counter(), cpu_s()
    with VideoFileSink(path, 10.0, (w, h), codec=codec) as sink:
        for frame in frames:
            sink.write(frame)
    return time.perf_counter() - start, cpu_s() - cpu


def psnr(frames: list[np.ndarray], path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    mse = []
    for frame in frames:
        ok, got = cap.read()
        assert ok, f"{path} has fewer frames than written"
        mse.append(np.mean((frame.astype(np.float32) - got) ** 2))
    cap.release()
    return float(10 * np.log10(255**2 / np.mean(mse)))


def with_busy_thread(fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        return fn()
    finally:
        stop.set()
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    frames = decode(args.frames)
    n = len(frames)
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved, so drift hits every row alike
            for name, (file, codec) in CASES.items():
                path = Path(tmp) / file
                wall, cpu = encode(frames, path, codec)
                busy, _ = with_busy_thread(lambda path=path, codec=codec: encode(frames, path, codec))
                row = rows.setdefault(name, {"wall": [], "cpu": [], "busy": []})
                row["wall"].append(wall * 1000 / n)
                row["cpu"].append(cpu * 1000 / n)
                row["busy"].append(busy * 1000 / n)
                row["mb"], row["psnr"] = [path.stat().st_size / 1e6], [psnr(frames, path)]
    print(f"# VideoFileSink encoding, {n} frames of vtest.avi (768x576), {machine()}")
    print(f"median of {args.rounds} rounds, interleaved\n")
    print("| codec | wall ms/frame | CPU ms/frame | wall ms/frame, busy Python thread beside | MB | PSNR dB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {median(r['wall']):.2f} | {median(r['cpu']):.2f} | {median(r['busy']):.2f} "
              f"| {r['mb'][0]:.2f} | {r['psnr'][0]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
