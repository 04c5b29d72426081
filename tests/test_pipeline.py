"""Overlapped stages: order, completeness, error propagation and clean shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from detector import Detections, Detector
from detector.io.types import Frame
from detector.pipeline import STAGES, run_pipeline, stream


class Tiny(nn.Module):
    """A stand-in detector: one box whose score encodes the frame's mean pixel value."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in images:
            value = float(img.mean())
            if self.fail_at is not None and round(value * 255) == self.fail_at:
                raise RuntimeError("model failed")
            out.append({"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([value]),
                        "labels": torch.tensor([1])})  # fmt: skip
        return out


def frames(n: int, fail_at: int | None = None) -> Iterator[Frame]:
    for i in range(n):
        if i == fail_at:
            raise OSError("decode failed")
        yield Frame(i, i / 10, np.full((8, 8, 3), i, np.uint8), "f")


def no_pipeline_threads() -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("detector-")]:
            return True
        time.sleep(0.02)
    return False


def test_every_frame_in_order_with_stage_timings() -> None:
    seen: list[tuple[int, float]] = []
    rendered: list[int] = []
    stats = run_pipeline(frames(50), Detector(Tiny()), lambda f, d: seen.append((f.index, float(d.scores[0]))),
                         render=lambda f, d: rendered.append(f.index))  # fmt: skip
    assert [i for i, _ in seen] == list(range(50)) and rendered == list(range(50))
    assert all(score == pytest.approx(i / 255) for i, score in seen)
    summary = stats.summary()
    assert summary["frames"] == 50 and set(summary["stages"]) == set(STAGES)
    assert all(len(stats.stages[s]) == 50 for s in STAGES)
    assert len(stats.latency_ms) == 50 and summary["fps"] == pytest.approx(50 / stats.seconds)
    assert no_pipeline_threads()


@pytest.mark.parametrize("where", ["source", "model", "writer"])
def test_a_failing_stage_stops_everything(where: str) -> None:
    written: list[int] = []

    def consume(frame: Frame, dets: Detections) -> None:
        if where == "writer" and frame.index == 7:
            raise ValueError("disk full")
        written.append(frame.index)

    detector = Detector(Tiny(fail_at=7 if where == "model" else None))
    expected = {"source": OSError, "model": RuntimeError, "writer": ValueError}[where]
    start = time.monotonic()
    with pytest.raises(expected):
        run_pipeline(frames(10_000, fail_at=7 if where == "source" else None), detector, consume, queue_size=2)
    assert time.monotonic() - start < 10, "the pipeline must stop promptly"
    assert written == list(range(7)), "frames before the failure are all written"
    assert no_pipeline_threads()


def test_stream_yields_in_order_and_stops_early() -> None:
    got = []
    for frame, dets in stream(Detector(Tiny()), frames(10_000), queue_size=2):
        got.append((frame.index, len(dets)))
        if frame.index == 4:
            break
    assert got == [(i, 1) for i in range(5)]
    assert no_pipeline_threads()
    got = []
    with pytest.raises(OSError):
        for frame, _ in stream(Detector(Tiny()), frames(10, fail_at=3)):
            got.append(frame.index)
    assert got == [0, 1, 2], "frames decoded before a source error are still yielded"
    assert no_pipeline_threads()


def test_stop_pipeline_from_a_stage_ends_the_run_quietly() -> None:
    from detector.errors import StopPipeline

    seen: list[int] = []

    def consume(frame: Frame, dets: Detections) -> None:
        seen.append(frame.index)
        if frame.index == 5:
            raise StopPipeline

    stats = run_pipeline(frames(100_000), Detector(Tiny()), consume, queue_size=1)
    assert seen == list(range(6)) and stats.frames == 5
    assert no_pipeline_threads()
