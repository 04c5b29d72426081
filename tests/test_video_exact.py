"""Video frames are what they say they are: exact --start on a variable-frame-rate H.264 file
with B-frames, --stride keeps the duration, live recordings keep real time, and the
'truncated' warning only for real damage."""

from __future__ import annotations

import dataclasses
import fractions
import logging
from pathlib import Path

import av  # PyAV (a dev dependency) writes the H.264 test file
import cv2
import numpy as np
import pytest

from detector import Detections
from detector.io import Frame, VideoFileSink, open_source
from detector.io.sources import VideoFileSource

from .conftest import DEMO, TORCHSCRIPT, read_video


def make_vfr_h264(path: Path, n: int = 300) -> None:
    """H.264 with B-frames whose frame rate alternates between 30 and 20 fps every 50 frames
    (as phones and screen recorders write): OpenCV's frame seek lands several frames off."""
    tb = fractions.Fraction(1, 90000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"bf": "3", "g": "30"}
        stream.time_base = tb
        base = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        t = 0
        for i in range(n):
            img = np.roll(base, i * 3, axis=1).copy()
            cv2.putText(img, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = t, tb
            t += 3000 if (i // 50) % 2 == 0 else 4500
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_start_is_exact_on_vfr_h264_with_b_frames(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    make_vfr_h264(path)
    reference = read_video(path)
    assert len(reference) == 300
    for start in (45, 72, 135, 234, 281, 299):  # where a container seek lands 1-7 frames off
        with VideoFileSource(path, start=start, end=min(start + 3, 300)) as source:
            got = [(f.index, f.image) for f in source]
        assert [i for i, _ in got] == list(range(start, min(start + 3, 300)))
        for index, image in got:
            assert np.array_equal(image, reference[index]), f"--start {start}: frame {index} has another image"
    with VideoFileSource(path, start=100, stride=7) as source:
        got = [(f.index, f.image) for f in source]
    assert [i for i, _ in got] == list(range(100, 300, 7))
    assert all(np.array_equal(image, reference[i]) for i, image in got)


def test_stride_keeps_duration_and_progress_counts_it(tmp_path: Path) -> None:
    from detector.cli import main

    out = tmp_path / "s.mp4"
    assert main(["-q", "run", str(DEMO), "--model", str(TORCHSCRIPT), "--stride", "3", "--start", "5",
                 "--end", "50", "--out", str(out)]) == 0  # fmt: skip
    cap = cv2.VideoCapture(str(out))
    try:
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10 / 3, rel=1e-3)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(range(5, 50, 3))
    finally:
        cap.release()
    with open_source(DEMO, stride=3, start=5, end=50) as source:
        assert isinstance(source, VideoFileSource)
        assert source.planned_frames == len(range(5, 50, 3)) == sum(1 for _ in source)


def test_live_recording_plays_as_long_as_it_took(tmp_path: Path) -> None:
    path = tmp_path / "live.mp4"
    image = np.zeros((48, 64, 3), np.uint8)
    with VideoFileSink(path, 30.0, (64, 48), timed=True) as sink:
        for t in (10.0, 10.2, 10.5, 11.0):  # a model at 2-5 fps on a 30 fps camera
            sink.write(Frame(0, t, image, "camera"), Detections.empty())
    frames = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert frames == 31, "1 s of recording at 30 fps (+ the last frame), not 4 frames played in 0.13 s"


def test_truncated_warning_only_for_a_real_shortfall(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for announced, warns in ((62, False), (65, False), (200, True)):  # the clip has 60 frames
        caplog.clear()
        with VideoFileSource(DEMO) as source:
            source.info = dataclasses.replace(source.info, frame_count=announced)
            assert sum(1 for _ in source) == 60
        assert ("truncated" in caplog.text) is warns, (announced, caplog.text)


def test_an_estimated_frame_count_is_not_called_damage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """MPEG-TS stores no frame count: OpenCV multiplies the container's duration -- here a 2.5 s audio
    track's, beside 24 frames at 25 fps -- by the frame rate. Ending short of that guess is said at INFO
    with why, not warned about as a truncated file; a stored count (MP4) still warns (above)."""
    from detector.io.sources import count_is_estimated

    from .test_nvdec import write_video

    ts = write_video(tmp_path / "audio.ts", audio=2.5)
    assert count_is_estimated(ts) and not count_is_estimated(DEMO)
    assert not count_is_estimated(tmp_path / "missing.ts")
    caplog.set_level(logging.INFO)
    with VideoFileSource(ts) as source:
        assert source.info.frame_count is not None and source.info.frame_count > 24 + 10
        assert sum(1 for _ in source) == 24
    assert "truncated" not in caplog.text
    assert "was an estimate from the file's duration" in caplog.text
