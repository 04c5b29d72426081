from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector import SinkError, SourceError
from detector.io import JsonlSink, VideoFileSink, open_source
from detector.io.sinks import prepare_output

from .conftest import COCO_MINI, DEMO, need


def test_video_yields_every_frame_in_order() -> None:
    with open_source(DEMO) as src:
        info = src.info
        frames = list(src)
    assert (info.kind, info.width, info.height, info.fps, info.frame_count) == ("video", 768, 576, 10.0, 60)
    assert [f.index for f in frames] == list(range(60))
    assert frames[10].timestamp == pytest.approx(1.0)
    assert frames[0].image.shape == (576, 768, 3) and frames[0].image.dtype == np.uint8


def test_video_stride() -> None:
    with open_source(DEMO, stride=7) as src:
        assert [f.index for f in src] == list(range(0, 60, 7))


def test_video_start_and_end() -> None:
    with open_source(DEMO, start=10, end=20, stride=3) as src:
        frames = list(src)
    assert [f.index for f in frames] == [10, 13, 16, 19]
    assert frames[0].timestamp == pytest.approx(1.0)
    with open_source(DEMO) as full:
        reference = [f.image for f in full][10]
    assert np.abs(frames[0].image.astype(int) - reference.astype(int)).mean() < 1.0, "seek lands on frame 10"
    with pytest.raises(SourceError, match="end > start"):
        open_source(DEMO, start=5, end=5)


def test_stopping_early_releases_the_capture() -> None:
    src = open_source(DEMO)
    with src:
        for frame in src:
            if frame.index == 3:
                break
    assert not src._cap.isOpened()


def test_image_folder_and_glob(tmp_path: Path) -> None:
    images = sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[:3]
    for p in images:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with open_source(tmp_path) as src:
        names = [f.name for f in src]
    assert names == sorted([p.name for p in images])  # the broken file is skipped with a warning
    with open_source(str(tmp_path / "0*.jpg")) as src:
        assert src.info.kind == "images" and len(list(src)) == 3


def test_single_image() -> None:
    path = sorted((COCO_MINI / "val2017").glob("*.jpg"))[0]
    with open_source(path) as src:
        (frame,) = list(src)
    assert src.info.kind == "image" and frame.image.shape[:2] == (src.info.height, src.info.width)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    with pytest.raises(SourceError, match="cannot decode"):
        open_source(text)
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"\x89PNG broken")
    with pytest.raises(SourceError, match="cannot decode .* as an image"):
        open_source(bad_image)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        open_source(tmp_path / "empty")


def test_video_sink_round_trip_with_float_fps(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with VideoFileSink(out, 29.97, (64, 48)) as sink:
        for i in range(5):
            sink.write(np.full((48, 64, 3), i * 40, np.uint8))
    cap = cv2.VideoCapture(str(out))
    try:
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(29.97, abs=0.01)
    finally:
        cap.release()
    with pytest.raises(SinkError, match="extension"):
        VideoFileSink(tmp_path / "clip.xyz", 10, (64, 48))


def test_jsonl_sink_flushes_each_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with JsonlSink(path) as sink:
        sink.write_record({"frame": 0})
        partial = next(tmp_path.glob("d.partial-*.jsonl"))  # renamed into place when complete
        assert partial.read_text() == '{"frame":0}\n'  # readable before close
    assert path.read_text() == '{"frame":0}\n' and not partial.exists()


def test_outputs_never_overwrite_the_input(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    shutil.copy(DEMO, src)
    with pytest.raises(SinkError, match="is an input file"):
        prepare_output(src, (src,))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="cannot create output folder"):
        prepare_output(blocker / "sub" / "out.mp4")


def test_a_folder_or_glob_of_videos_is_not_one_source(tmp_path: Path) -> None:
    """``open_source`` (and so ``run(detector, FOLDER)``) on a folder of videos says what it holds and how
    to run it (``detector run FOLDER`` runs it a video at a time), not that it holds no videos."""
    for name in ("a.mp4", "b.avi"):
        (tmp_path / name).write_bytes(DEMO.read_bytes())
    for spec in (tmp_path, tmp_path / "*.mp4"):
        with pytest.raises(SourceError, match=r"holds videos \(\d files?\) and no images: .*`detector run "):
            open_source(spec)
