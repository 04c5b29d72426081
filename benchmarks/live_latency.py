"""Live latency: a simulated 30 fps live source and a model slower than 30 fps.

The source is a capture object that delivers real vtest.avi frames paced at
30 fps (as a camera would); the model is the real TorchScript detector (or
``--model``), slower than 30 fps on a CPU. For every displayed frame we record its age:
display time minus capture time. With newest-frame capture the age stays near
one model latency; a FIFO reader that keeps every frame falls further behind
with every frame (shown for contrast).

    .venv/bin/python benchmarks/live_latency.py [--seconds 20]
    .venv/bin/python benchmarks/live_latency.py --model retinanet_resnet50_fpn --weights random --min-size 320
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from common import TORCHSCRIPT, VIDEO, machine, p95, sized

from detector import Detector, load_config
from detector.io.live import LiveSource
from detector.io.sources import Frame
from detector.pipeline import run_pipeline


class PacedCapture:
    """cv2.VideoCapture look-alike: decodes vtest.avi ahead, then hands frames out at ``fps``."""

    def __init__(self, fps: float = 30.0, n: int = 300) -> None:
        cap = cv2.VideoCapture(str(VIDEO))
        self.frames = [cap.read()[1] for _ in range(n)]
        cap.release()
        self.period, self.i, self.next_t = 1.0 / fps, 0, time.perf_counter()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        self.next_t += self.period
        time.sleep(max(0.0, self.next_t - time.perf_counter()))
        frame = self.frames[self.i % len(self.frames)].copy()
        self.i += 1
        return True, frame

    def get(self, prop: int) -> float:
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--model", default=str(TORCHSCRIPT), help="default: the TorchScript model in ../shared")
    ap.add_argument("--weights", help="e.g. random, for a registry model")
    ap.add_argument("--min-size", type=int)
    args = ap.parse_args()
    overrides = {"model": args.model, "weights": args.weights, **sized(args.min_size)}
    detector = Detector.from_config(load_config(None, overrides))
    ages: list[float] = []
    deadline = [0.0]

    def show(frame: Frame, dets) -> None:  # noqa: ANN001
        ages.append((time.perf_counter() - frame.captured_at) * 1000)
        if time.perf_counter() > deadline[0]:
            from detector.errors import StopPipeline

            raise StopPipeline

    source = LiveSource(PacedCapture, name="paced-30fps", kind="camera", reconnect=False)
    deadline[0] = time.perf_counter() + args.seconds
    with source:
        stats = run_pipeline(source, detector, show, queue_size=1)
    model = float(np.median(stats.stages["inference"]))
    thirds = np.array_split(np.array(ages[5:]), 3)
    print(f"# live latency, simulated 30 fps camera, model {detector.name}, {machine()}")
    print(f"{len(ages)} frames shown in {args.seconds:.0f} s ({stats.frames / stats.seconds:.1f} fps), "
          f"{source.dropped} captured frames skipped as stale\n")  # fmt: skip
    print("| figure | ms |")
    print("|---|---:|")
    print(f"| model latency (median inference) | {model:.0f} |")
    print(f"| age of displayed frame, p50 | {np.median(ages):.0f} |")
    print(f"| age of displayed frame, p95 | {p95(ages):.0f} |")
    print(f"| p95 / model latency | {p95(ages) / model:.2f} |")
    print(f"| p50 age, first / middle / last third of the run | {' / '.join(f'{np.median(t):.0f}' for t in thirds)} |")

    # contrast: the same model reading every frame in order (no dropping), for a few seconds
    cap, fifo_ages, t_end = PacedCapture(), [], time.perf_counter() + min(args.seconds, 8)
    start = time.perf_counter()
    for i in range(10_000):
        captured = start + (i + 1) * cap.period  # when a camera would have delivered frame i
        frame = cap.frames[i % len(cap.frames)]
        if time.perf_counter() < captured:
            time.sleep(captured - time.perf_counter())
        detector(frame)
        fifo_ages.append((time.perf_counter() - captured) * 1000)
        if time.perf_counter() > t_end:
            break
    print(f"\nFIFO reader without dropping, same model, {len(fifo_ages)} frames: age grows from "
          f"{fifo_ages[0]:.0f} ms to {fifo_ages[-1]:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
