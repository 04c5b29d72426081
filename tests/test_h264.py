""".mp4/.m4v/.mov/.mkv are H.264 through PyAV (browsers play it), OpenCV's mp4v when PyAV cannot;
every guarantee of the file sinks holds for both. Small synthetic videos, a few dozen frames."""

from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
import torch

from detector import Detector
from detector.cli import main
from detector.errors import SinkError
from detector.io import Frame, VideoFileSink, sinks
from detector.runner import run
from detector.structures import Detections

from .conftest import DEMO, TORCHSCRIPT, need, read_video


def pattern(w: int, h: int, i: int) -> np.ndarray:
    """A smooth moving colour gradient (what a codec keeps well), frame ``i``."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    b = 128 + 100 * np.sin((x + 3 * i) / 23.0)
    g = 128 + 100 * np.cos((y - 2 * i) / 19.0)
    r = 128 + 100 * np.sin((x + y + 4 * i) / 31.0)
    return np.stack([b, g, r], -1).astype(np.uint8)


def write(path: Path, frames: list[np.ndarray], fps: float = 10.0, **kwargs: object) -> VideoFileSink:
    h, w = frames[0].shape[:2]
    with VideoFileSink(path, fps, (w, h), **kwargs) as sink:  # type: ignore[arg-type]
        for frame in frames:
            sink.write(frame)
    return sink


def codec_of(path: Path) -> str:
    with av.open(str(path)) as container:
        return str(container.streams.video[0].codec_context.name)


def top_atoms(path: Path) -> list[str]:
    data, i, atoms = path.read_bytes(), 0, []
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        atoms.append(kind.decode("latin-1"))
        i += size if size >= 8 else len(data)
    return atoms


FRAMES = [pattern(160, 120, i) for i in range(24)]


def mean_abs_diff(written: list[np.ndarray], read: list[np.ndarray]) -> float:
    h, w = read[0].shape[:2]
    return float(np.mean([np.abs(a[:h, :w].astype(np.int16) - b).mean() for a, b in zip(written, read, strict=True)]))


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".m4v", ".mkv"])
def test_default_is_h264_and_reads_back(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    sink = write(path, FRAMES)
    assert (sink.codec, sink.codec_info) == ("h264", "H.264 (libx264)")
    assert codec_of(path) == "h264"
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    frames = read_video(path)
    assert len(frames) == len(FRAMES) and frames[0].shape == (120, 160, 3)
    assert mean_abs_diff(FRAMES, frames) < 8
    if suffix != ".mkv":  # +faststart: the index (moov) before the data, so a browser plays while loading
        atoms = top_atoms(path)
        assert atoms.index("moov") < atoms.index("mdat"), atoms


def test_mp4v_on_request_and_avi_stays_mjpg(tmp_path: Path) -> None:
    sink = write(tmp_path / "old.mp4", FRAMES, codec="mp4v")
    assert (sink.codec, sink.codec_info) == ("mp4v", "MPEG-4 part 2 (mp4v)")
    assert codec_of(tmp_path / "old.mp4") == "mpeg4"
    assert mean_abs_diff(FRAMES, read_video(tmp_path / "old.mp4")) < 8
    sink = write(tmp_path / "clip.avi", FRAMES)
    assert (sink.codec, codec_of(tmp_path / "clip.avi")) == ("mjpg", "mjpeg")


def test_fps_kept(tmp_path: Path) -> None:
    for fps in (29.97, 10 / 3, 25.0):
        path = tmp_path / "fps.mp4"
        write(path, FRAMES[:6], fps=fps)
        cap = cv2.VideoCapture(str(path))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(fps, rel=1e-3)
        cap.release()


def test_without_pyav_falls_back_to_mp4v(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "av", None)  # import av raises ImportError
        assert sinks.h264_unavailable() == "PyAV is not installed"
        sink = write(tmp_path / "a.mp4", FRAMES)
        mkv = write(tmp_path / "a.mkv", FRAMES)
    assert (sink.codec, sink.codec_info) == ("mp4v", "MPEG-4 part 2 (mp4v; install av for H.264)")
    assert codec_of(tmp_path / "a.mp4") == "mpeg4" and len(read_video(tmp_path / "a.mp4")) == len(FRAMES)
    assert (mkv.codec, mkv.codec_info) == ("mp4v", "MPEG-4 part 2 (XVID; install av for H.264)")
    # a PyAV without libx264
    monkeypatch.setattr(sinks, "_import_av", lambda: SimpleNamespace(codecs_available={"mpeg4"}))
    sink = write(tmp_path / "b.mp4", FRAMES)
    assert sink.codec == "mp4v" and "no libx264" in sink.codec_info and "pip install" in sink.codec_info


def test_h264_demanded_but_unavailable_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(SinkError) as err:
        VideoFileSink(tmp_path / "a.mp4", 10.0, (160, 120), codec="h264")
    assert "\n" not in str(err.value) and "pip install av" in str(err.value), err.value
    assert not list(tmp_path.iterdir())
    with pytest.raises(SinkError, match="MJPG"):
        VideoFileSink(tmp_path / "a.avi", 10.0, (160, 120), codec="h264")
    with pytest.raises(SinkError, match="auto, h264, mp4v"):
        VideoFileSink(tmp_path / "a.mp4", 10.0, (160, 120), codec="hevc")


def test_encoder_failure_falls_back_or_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sinks, "X264_OPTIONS", {"preset": "no-such-preset"})  # libx264 refuses to open
    caplog.set_level(logging.WARNING)
    sink = write(tmp_path / "a.mp4", FRAMES)
    assert sink.codec == "mp4v" and "H.264 encoder failed" in sink.codec_info
    assert "H.264 encoder failed" in caplog.text and len(read_video(tmp_path / "a.mp4")) == len(FRAMES)
    with pytest.raises(SinkError) as err:
        VideoFileSink(tmp_path / "b.mp4", 10.0, (160, 120), codec="h264")
    assert "\n" not in str(err.value) and "--codec mp4v" in str(err.value)
    assert not list(tmp_path.glob("b*")) and not list(tmp_path.glob("*partial*"))


@pytest.mark.parametrize("codec", ["auto", "mp4v"])
def test_odd_size_is_cropped_to_even(tmp_path: Path, codec: str) -> None:
    frames = [pattern(321, 241, i) for i in range(20)]
    path = tmp_path / "odd.mp4"
    sink = write(path, frames, codec=codec)
    read = read_video(path)
    assert len(read) == 20 and read[0].shape == (240, 320, 3)  # yuv420p: the last column and row go
    assert mean_abs_diff(frames, read) < 8
    assert codec_of(path) == ("h264" if codec == "auto" else "mpeg4") and sink.size == (321, 241)


@pytest.mark.parametrize("size", [(100, 50), (98, 62)])
def test_sizes_with_padded_rows(tmp_path: Path, size: tuple[int, int]) -> None:
    """Widths whose planes PyAV pads for alignment (line size > width) are copied row by row."""
    frames = [pattern(*size, i) for i in range(12)]
    write(tmp_path / "p.mp4", frames)
    read = read_video(tmp_path / "p.mp4")
    assert len(read) == 12 and read[0].shape == (size[1], size[0], 3)
    assert mean_abs_diff(frames, read) < 8


def test_size_mismatch_raises(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="differs"), VideoFileSink(tmp_path / "a.mp4", 10.0, (160, 120)) as sink:
        sink.write(pattern(162, 120, 0))
    assert not list(tmp_path.iterdir()), "no frame written and an error: nothing is left"


def test_written_under_a_temporary_name_and_renamed(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(b"earlier")
    with VideoFileSink(path, 10.0, (160, 120)) as sink:
        for frame in FRAMES[:5]:
            sink.write(frame)
        assert path.read_bytes() == b"earlier" and sinks.partial_path(path).exists()
    assert sink.codec == "h264" and len(read_video(path)) == 5 and not list(tmp_path.glob("*partial*"))
    # an error after some frames: the earlier file stays, the new frames are beside it, finalised
    with pytest.raises(RuntimeError), VideoFileSink(path, 10.0, (160, 120)) as sink:
        for frame in FRAMES[:7]:
            sink.write(frame)
        raise RuntimeError("model failed")
    assert len(read_video(path)) == 5
    assert len(read_video(tmp_path / "v.incomplete.mp4")) == 7 and codec_of(tmp_path / "v.incomplete.mp4") == "h264"
    # an error before any frame: no temporary file is left, the earlier file stays
    with pytest.raises(RuntimeError), VideoFileSink(path, 10.0, (160, 120)):
        raise RuntimeError("model failed")
    assert len(read_video(path)) == 5 and not list(tmp_path.glob("*partial*"))


def test_stopped_by_ctrl_c_is_finalised(tmp_path: Path) -> None:
    """KeyboardInterrupt (Ctrl-C, SIGTERM): libx264's delayed frames flushed, the file closed and in place."""
    path = tmp_path / "stop.mp4"
    with pytest.raises(KeyboardInterrupt), VideoFileSink(path, 10.0, (160, 120)) as sink:
        for frame in FRAMES:
            sink.write(frame)
        raise KeyboardInterrupt
    read = read_video(path)
    assert len(read) == len(FRAMES) and mean_abs_diff(FRAMES, read) < 8
    atoms = top_atoms(path)
    assert atoms.index("moov") < atoms.index("mdat") and not list(tmp_path.glob("*partial*"))


def test_timed_recording_repeats_frames(tmp_path: Path) -> None:
    path = tmp_path / "live.mp4"
    with VideoFileSink(path, 30.0, (160, 120), timed=True) as sink:
        for i, t in enumerate((10.0, 10.2, 10.5, 11.0)):  # a model at 2-5 fps on a 30 fps camera
            sink.write(Frame(i, t, FRAMES[i], "camera"), Detections.empty())
    assert sink.codec == "h264" and sink.frames == 31
    read = read_video(path)
    assert len(read) == 31, "1 s of recording at 30 fps (+ the last frame)"
    # frames 0-5 are the first frame, 6-14 the second, 15-29 the third, 30 the fourth
    for index, source in ((0, 0), (5, 0), (6, 1), (14, 1), (15, 2), (29, 2), (30, 3)):
        assert np.abs(read[index].astype(np.int16) - FRAMES[source]).mean() < 8, index


class Instant(torch.nn.Module):
    """Two fixed boxes per image: a model that costs nothing."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes = torch.tensor([[10.0, 10.0, 60.0, 80.0]])
        return [{"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])} for _ in images]


def test_run_logs_the_codec_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    detector = Detector(Instant(), name="instant", device="cpu")
    caplog.set_level(logging.INFO, logger="detector.runner")
    result = run(detector, DEMO, out=tmp_path / "a.mp4", max_frames=3, progress=False)
    assert [r.getMessage() for r in caplog.records if "video:" in r.getMessage()] == [
        f"video: H.264 (libx264) -> {tmp_path / 'a.mp4'}"
    ]
    assert result.out == tmp_path / "a.mp4" and codec_of(result.out) == "h264"
    lines: list[str] = []
    run(detector, DEMO, out=tmp_path / "b.mp4", max_frames=3, progress=False, codec="mp4v", announce=lines.append)
    assert lines == [f"video: MPEG-4 part 2 (mp4v) -> {tmp_path / 'b.mp4'}"] and codec_of(tmp_path / "b.mp4") == "mpeg4"


def test_cli_codec_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.mp4"
    args = ["run", str(DEMO), "--model", str(need(TORCHSCRIPT)), "--max-frames", "2", "--out", str(out)]
    assert main([*args, "--codec", "mp4v"]) == 0
    printed = capsys.readouterr().out
    assert f"video: MPEG-4 part 2 (mp4v) -> {out}\n" in printed and printed.count("video:") == 1
    assert codec_of(out) == "mpeg4" and len(read_video(out)) == 2
    # --codec h264 without PyAV: one line, before the model loads, nothing written
    monkeypatch.setitem(sys.modules, "av", None)
    assert main(["-q", *args[:-1], str(tmp_path / "h.mp4"), "--codec", "h264"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pip install av" in err, err
    assert not list(tmp_path.glob("h*"))
