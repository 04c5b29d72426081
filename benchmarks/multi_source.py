"""Many live sources, one model: aggregate and per-source frames/s and frame age with 1, 2, 4 and 8
sources, each vtest.avi replayed live at ``--fps`` (a paced capture, as a camera would deliver),
through ``detector.pipeline.multi_stream`` and the model (default d2go, on the CPU). Answers: does
batching across four sources give more aggregate frames/s than one source alone? And, with
``--processes``, against what users do without it: one process per camera, each loading the model
and detecting its one source (all started at once, measured over the same seconds).

    .venv/bin/python benchmarks/multi_source.py [--seconds 20] [--fps 10] [--counts 1,2,4,8] [--processes 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import cv2
import numpy as np
from common import VIDEO, machine

import detector
from detector.io.live import LiveSource
from detector.pipeline.multi import multi_stream


class PacedCapture:
    """cv2.VideoCapture look-alike: vtest.avi decoded as it plays, handed out at ``fps``, looping;
    ``offset`` starts each camera at a different frame."""

    def __init__(self, fps: float, offset: int = 0) -> None:
        self.cap = cv2.VideoCapture(str(VIDEO))
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, offset)
        self.period, self.next_t, self.fps = 1.0 / fps, time.perf_counter(), fps

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.cap.isOpened()

    def read(self) -> tuple[bool, np.ndarray | None]:
        ok, frame = self.cap.read()
        if not ok:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        self.next_t = max(self.next_t + self.period, time.perf_counter() - self.period)
        time.sleep(max(0.0, self.next_t - time.perf_counter()))
        return ok, frame

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.cap.release()


def camera(fps: float, offset: int) -> LiveSource:
    return LiveSource(lambda: PacedCapture(fps, offset), name=f"vtest@{fps:g}fps+{offset}", kind="camera",
                      reconnect=False)  # fmt: skip


def measure(model: detector.Detector, n: int, fps: float, seconds: float, warmup: float, offset: int = 0) -> dict:
    sources = {f"cam{i}": (lambda i=i: camera(fps, 150 * (i + offset))) for i in range(n)}
    counts = dict.fromkeys(sources, 0)
    ages: dict[str, list[float]] = {name: [] for name in sources}
    batches = 0
    with multi_stream(model, sources) as results:
        start = time.perf_counter()
        begin = end = None
        last_batch = None
        for name, frame, _ in results:
            now = time.perf_counter()
            if begin is None and now - start >= warmup:
                begin = now
            if begin is not None:
                counts[name] += 1
                ages[name].append((now - frame.captured_at) * 1000)
                if results.last_batch is not last_batch:
                    batches += 1
                    last_batch = results.last_batch
                if now - begin >= seconds:
                    end = now
                    break
        health = results.health()
    span = (end or time.perf_counter()) - (begin or start)
    return {"counts": counts, "ages": ages, "span": span, "batches": batches, "health": health}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="d2go")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--processes", type=int, default=0, help="also run N processes of one camera each")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one camera (offset), JSON out
    args = ap.parse_args()
    model = detector.load(args.model, device="cpu")
    if args.child is not None:
        r = measure(model, 1, args.fps, args.seconds, args.warmup, offset=args.child)
        print(json.dumps({"frames": sum(r["counts"].values()), "span": r["span"],
                          "ages": [a for v in r["ages"].values() for a in v]}))  # fmt: skip
        return
    first = cv2.VideoCapture(str(VIDEO)).read()[1]
    for _ in range(3):
        model(first)
    t0 = time.perf_counter()
    for _ in range(10):
        model(first)
    alone_ms = (time.perf_counter() - t0) * 100
    print(f"# multi-source live, {args.model} on the CPU, vtest.avi {first.shape[1]}x{first.shape[0]} "
          f"replayed live at {args.fps:g} fps per source, {args.seconds:g} s measured after {args.warmup:g} s; "
          f"{machine()}")  # fmt: skip
    print(f"model alone: {alone_ms:.0f} ms/frame ({1000 / alone_ms:.1f} frames/s), one frame per call\n")
    print("| sources | aggregate fps | per-source fps | frames/batch | age p50 ms | age p95 ms | dropped as stale |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    aggregate = {}
    for n in (int(c) for c in args.counts.split(",")):
        r = measure(model, n, args.fps, args.seconds, args.warmup)
        total = sum(r["counts"].values())
        aggregate[n] = total / r["span"]
        per = " / ".join(f"{c / r['span']:.1f}" for c in r["counts"].values())
        ages = np.concatenate([np.asarray(a) for a in r["ages"].values() if a]) if total else np.zeros(1)
        dropped = sum(h["dropped"] for h in r["health"].values())
        print(f"| {n} | {aggregate[n]:.1f} | {per} | {total / max(r['batches'], 1):.2f} | "
              f"{np.median(ages):.0f} | {np.percentile(ages, 95):.0f} | {dropped} |")  # fmt: skip
    if args.processes:
        n = args.processes
        cmd = [sys.executable, __file__, "--model", args.model, "--seconds", str(args.seconds), "--warmup",
               str(args.warmup + 10), "--fps", str(args.fps)]  # fmt: skip  # more warm-up: n models load at once
        procs = [subprocess.Popen([*cmd, "--child", str(i)], stdout=subprocess.PIPE, text=True) for i in range(n)]
        got = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        total = sum(g["frames"] / g["span"] for g in got)
        ages = np.asarray([a for g in got for a in g["ages"]] or [0.0])
        per = " / ".join(f"{g['frames'] / g['span']:.1f}" for g in got)
        print(f"| {n} processes, one camera each | {total:.1f} | {per} | 1 | {np.median(ages):.0f} | "
              f"{np.percentile(ages, 95):.0f} | - |")  # fmt: skip
        if n in aggregate:
            print(f"\n{n} sources in one process vs {n} processes of one: {aggregate[n]:.1f} vs {total:.1f} "
                  f"aggregate frames/s ({aggregate[n] / max(total, 1e-9):.2f}x)")  # fmt: skip
    if 1 in aggregate and 4 in aggregate:
        gain = aggregate[4] / aggregate[1]
        verdict = "more" if gain > 1.05 else "no more"
        print(f"\n4 sources give {verdict} aggregate frames/s than one alone: {aggregate[4]:.1f} vs "
              f"{aggregate[1]:.1f} ({gain:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
