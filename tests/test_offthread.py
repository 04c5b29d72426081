"""OffThreadSink: a sink's writes in their own thread, in order, errors surfaced, queue drained."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from detector import Detections
from detector.errors import SinkError
from detector.io.offthread import OffThreadSink
from detector.io.types import Frame


class Slow:
    def __init__(self, fail_at: int | None = None) -> None:
        self.seen: list[int] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def write(self, frame: Frame, detections: Detections) -> None:
        time.sleep(0.002)
        if frame.index == self.fail_at:
            raise SinkError("disk full")
        self.seen.append(frame.index)
        self.threads.add(threading.current_thread().name)


def frame(i: int) -> Frame:
    return Frame(i, i / 10, np.zeros((4, 4, 3), np.uint8), "f")


def test_in_order_in_another_thread_and_drained_on_close() -> None:
    sink = Slow()
    second = Slow()
    off = OffThreadSink(sink, second, depth=3)
    for i in range(40):
        off.write(frame(i), Detections.empty())
    off.close()  # every queued frame is written before close returns
    assert sink.seen == second.seen == list(range(40))
    assert sink.threads == {"detector-encode"}
    off.close()  # twice is fine


def test_an_error_in_the_thread_reaches_the_caller() -> None:
    after = Slow()
    off = OffThreadSink(Slow(fail_at=5), after, depth=2)
    with pytest.raises(SinkError, match="disk full"):
        for i in range(200):
            off.write(frame(i), Detections.empty())
        off.close()
    off.close()  # the error was reported once; closing again neither hangs nor raises
    assert after.seen == [0, 1, 2, 3, 4]  # the sink after the failing one never gets that frame


def test_run_writes_the_video_through_the_encoder_thread(tmp_path: Path) -> None:
    from detector import Detector, run

    from .conftest import DEMO, frames_in
    from .test_batching import Recording

    result = run(Detector(Recording(), device="cpu"), DEMO, out=tmp_path / "o.avi", max_frames=12, progress=False)
    assert result.out == tmp_path / "o.avi" and frames_in(result.out) == 12
    assert not [t for t in threading.enumerate() if t.name == "detector-encode"]


def test_copy_keeps_later_drawing_out_of_the_queued_frame() -> None:
    seen: list[int] = []

    class Recorder:
        def write(self, frame: Frame, detections: Detections) -> None:
            time.sleep(0.01)
            seen.append(int(frame.image.max()))

    off = OffThreadSink(Recorder(), copy=True)
    f = frame(0)
    off.write(f, Detections.empty())
    f.image[:] = 255  # another sink drawing on the frame after the hand-over
    off.close()
    assert seen == [0]


def test_close_while_unwinding_logs_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    off = OffThreadSink(Slow(fail_at=0))
    off.write(frame(0), Detections.empty())
    with caplog.at_level("WARNING"):
        off.__exit__(KeyboardInterrupt)  # the run is already stopping: the stop wins, the error is logged
    assert "disk full" in caplog.text
