"""Timing helpers for the benchmark scripts: perf_counter, warm-up skipped, medians and p95."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VIDEO = SHARED / "data" / "video" / "vtest.avi"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, iters: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


def real_frame(index: int = 0) -> np.ndarray:
    """Frame ``index`` of the real 768x576 pedestrian clip in ../shared."""
    cap = cv2.VideoCapture(str(VIDEO))
    try:
        for _ in range(index + 1):
            ok, frame = cap.read()
            if not ok:
                raise SystemExit(f"cannot read frame {index} of {VIDEO}; the benchmarks need ../shared")
        return frame
    finally:
        cap.release()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
