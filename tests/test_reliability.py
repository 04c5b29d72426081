"""Long runs stay flat in memory; open/close cycles leave no threads or file descriptors."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from detector import Detector, annotate
from detector.io import JsonlSink, open_source
from detector.io.browser import BrowserSink
from detector.io.types import Frame
from detector.pipeline import run_pipeline, stream

from .conftest import DEMO
from .test_live import Publisher
from .test_pipeline import Tiny


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(n: int) -> Iterator[Frame]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for i in range(n):
        yield Frame(i, i / 30, base.copy(), "synthetic", time.perf_counter())


def test_memory_stays_flat_over_6000_frames(tmp_path: Path) -> None:
    samples: dict[int, float] = {}
    with JsonlSink(tmp_path / "d.jsonl") as jsonl:

        def consume(frame: Frame, dets) -> None:  # noqa: ANN001
            jsonl.write(frame, dets)
            if frame.index in (1000, 5999):
                gc.collect()
                samples[frame.index] = rss_mb()

        stats = run_pipeline(synthetic(6000), Detector(Tiny()), consume, render=lambda f, d: annotate(f.image, d))
    assert stats.frames == 6000
    growth = samples[5999] - samples[1000]
    assert growth < 10, f"RSS grew {growth:.1f} MB between frame 1000 and 6000"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("detector-")]


def settle() -> None:
    deadline = time.monotonic() + 3
    while pipeline_threads() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_100_open_close_cycles_leave_nothing_behind() -> None:
    detector = Detector(Tiny())
    with open_source(DEMO) as src:  # warm up OpenCV/FFmpeg's one-time allocations
        next(iter(src))
    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    for i in range(100):
        with open_source(DEMO) as src:
            if i % 2:
                run_pipeline(src, detector, lambda f, d: None, queue_size=2)  # early stop below is the other half
            else:
                for n, _ in enumerate(stream(detector, src, queue_size=2)):
                    if n == 3:
                        break
    settle()
    gc.collect()
    assert pipeline_threads() == []
    assert threading.active_count() == threads
    assert open_fds() <= fds + 2, f"file descriptors: {fds} before, {open_fds()} after"


def test_live_source_and_server_cycles_leave_nothing_behind() -> None:
    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    for _ in range(20):
        with BrowserSink("127.0.0.1", 0) as sink:
            publisher = Publisher(sink, fps=60)
            try:
                with open_source(sink.url + "stream.mjpg") as src:
                    next(iter(src))
            finally:
                publisher.close()
    settle()
    gc.collect()
    assert pipeline_threads() == [], pipeline_threads()
    assert threading.active_count() == threads
    assert open_fds() <= fds + 2, f"file descriptors: {fds} before, {open_fds()} after"
