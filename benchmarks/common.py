"""Shared by the benchmark scripts: the real inputs in ../shared, timing (perf_counter, warm-up
skipped, medians and p95), input sizes, the plain OpenCV loop they compare against, the machine line.
Figures go to ``benchmarks/results/`` or the README, never into these docstrings."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VIDEO = SHARED / "data" / "video" / "vtest.avi"
TORCHSCRIPT = SHARED / "models" / "d2go_faster_rcnn_fbnetv3a_c4_coco_int8.torchscript.pt"
"""The D2Go int8 TorchScript detector (the same file ships in the package as the model ``d2go``)."""


def sized(min_size: int | None) -> dict[str, int]:
    """Config overrides for a shorter side of ``min_size`` with torchvision's 800:1333 ratio for the
    longer side (never binding on vtest.avi's 4:3 frames); none when ``min_size`` is unset."""
    if not min_size:
        return {}
    return {"min_size": min_size, "max_size": max(min_size, min_size * 1333 // 800)}


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


def decode(n: int, video: Path = VIDEO) -> list[np.ndarray]:
    """The first ``n`` frames of ``video`` (fewer if it is shorter); exits when none can be read."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    try:
        while len(frames) < n:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise SystemExit(f"cannot read {video}; the benchmarks need ../shared beside the checkout (or a --video)")
    return frames


Box = tuple[tuple[int, int, int, int], str]


def plain_loop(n: int, out: Path, boxes_of: Callable[[np.ndarray], Iterable[Box]]) -> float:
    """What a hand-written OpenCV script does, one frame at a time and every stage in turn: read
    ``VIDEO``, get ``(x1, y1, x2, y2), text`` boxes from ``boxes_of(frame)``, draw them, write mp4v.
    Returns frames/s."""
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(VIDEO))
    fps = cap.get(cv2.CAP_PROP_FPS)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    done = 0
    try:
        while done < n:
            ok, frame = cap.read()
            if not ok:
                break
            for (x1, y1, x2, y2), text in boxes_of(frame):
                cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 255, 0), 2)
                cv2.putText(frame, text, (x1, y1 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
            writer.write(frame)
            done += 1
    finally:
        cap.release()
        writer.release()
    return done / (time.perf_counter() - start)


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The x86 flags that decide which precisions run fast here (int8 dot products, native bf16)."""


def cpu_flags() -> list[str]:
    """Which of :data:`SIMD_FLAGS` this CPU has (``/proc/cpuinfo``; none where it cannot be read)."""
    words = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    return [f for f in SIMD_FLAGS if f in words]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
