"""Video decoding on NVDEC (PyAV's CUDA hwaccel) and its CPU fallback (issue 21, item 5).

On a machine without CUDA the hardware decoder cannot be opened; everything else -- the NV12 repack
NVDEC's pictures go through, the PyAV source's frames, indices, timestamps and ``info`` against
OpenCV's, the choice and fallback in ``open_source`` and the CLI's errors -- is tested here with
PyAV decoding on the CPU. Where CUDA and NVDEC exist (a lent GPU machine), the same tests check
the hardware-decoded frames against OpenCV's instead of the fallback.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.errors import SourceError
from detector.io.sources import VideoFileSource, open_source

from .conftest import COCO_MINI, VIDEO, need
from .test_cli import one_line_error, run_cli

av = pytest.importorskip("av", reason="PyAV is part of the test install (pip install -e .[test])")

from detector.io.nvdec import NvdecUnavailable, PyAVVideoSource, nvdec_unavailable, to_bgr  # noqa: E402

CUDA = torch.cuda.is_available()


def nvdec_works(path: Path) -> bool:
    """Whether NVDEC decodes ``path`` on this machine (False on every machine without CUDA)."""
    if not CUDA or nvdec_unavailable() is not None:
        return False
    try:
        PyAVVideoSource(path, gpu=0).close()
    except NvdecUnavailable:
        return False
    return True


def write_h264(
    path: Path, *, colorspace: int, color_range: int, frames: int = 24, size: tuple[int, int] = (320, 240)
) -> Path:
    """A real H.264 file with B-frames and the given colour tags (1 = BT.709; range 1 = limited, 2 = full),
    made of frames of the shared video, at 25 frames/s with a non-zero start time."""
    cap = cv2.VideoCapture(str(need(VIDEO)))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"bf": "2", "g": "12"})
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p" if color_range == 2 else "yuv420p"
        stream.codec_context.colorspace = colorspace
        stream.codec_context.color_range = color_range
        for i in range(frames):
            ok, image = cap.read()
            assert ok
            frame = av.VideoFrame.from_ndarray(cv2.resize(image, size), format="bgr24")
            frame.pts = i + 3  # a stream that does not start at 0
            frame.time_base = Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    cap.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("nvdec")
    return [
        need(VIDEO),  # MS-MPEG4, untagged
        write_h264(folder / "bt709.mp4", colorspace=1, color_range=1),
        write_h264(folder / "full.mp4", colorspace=1, color_range=2),
        write_h264(folder / "odd.mp4", colorspace=2, color_range=0, size=(322, 182)),
    ]


@pytest.mark.parametrize("size", [(241, 321), (240, 320), (101, 64), (2, 2)])
@pytest.mark.parametrize(("colorspace", "color_range"), [(1, 1), (2, 0), (5, 2)])
def test_nv12_converts_as_planar_420(size: tuple[int, int], colorspace: int, color_range: int) -> None:
    """NVDEC's NV12 pictures give the pixels the planar 4:2:0 picture gives (what OpenCV converts),
    for odd sizes, padded rows and every colour tag; converting NV12 directly would not."""
    h, w = size
    image = cv2.imread(str(sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[0]))[:h, :w]
    planar = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24").reformat(format="yuv420p")
    planar.colorspace, planar.color_range = colorspace, color_range
    nv12 = planar.reformat(format="nv12")
    nv12.colorspace, nv12.color_range = colorspace, color_range
    assert nv12.format.name == "nv12"
    np.testing.assert_array_equal(to_bgr(nv12), planar.to_ndarray(format="bgr24"))
    if size == (240, 320) and colorspace == 2:
        assert np.abs(nv12.to_ndarray(format="bgr24").astype(int) - to_bgr(nv12)).max() > 0, "the repack is moot"


@pytest.mark.parametrize("window", [{}, {"start": 5, "stride": 3, "end": 20}, {"start": 1}])
def test_pyav_frames_equal_opencv(videos: list[Path], window: dict[str, int]) -> None:
    """PyAV's decode (on NVDEC where it works, else the CPU) gives OpenCV's frames: same pixels, indices,
    timestamps (also for a stream starting at 0.12 s, with B-frames), info and planned frame count."""
    for path in videos:
        gpu = 0 if nvdec_works(path) else None
        with VideoFileSource(path, **window) as ref, PyAVVideoSource(path, gpu=gpu, **window) as ours:
            assert ours.info == ref.info
            assert ours.planned_frames == ref.planned_frames
            want, got = list(ref), list(ours)
        assert [f.index for f in got] == [f.index for f in want] and len(got) == ref.planned_frames
        np.testing.assert_allclose([f.timestamp for f in got], [f.timestamp for f in want], atol=1e-6)
        assert all(f.name == path.stem for f in got)
        for a, b in zip(got, want, strict=True):
            if gpu is None:
                np.testing.assert_array_equal(a.image, b.image, err_msg=f"{path.name} frame {a.index}")
            else:  # NVDEC's own reconstruction: H.264 is bit-exact by spec, other codecs close
                assert np.abs(a.image.astype(int) - b.image).mean() < 1.0, (path.name, a.index)


def test_pyav_source_errors(videos: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="past the end .* it has 24 frames"):
        PyAVVideoSource(videos[1], gpu=None, start=24)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(SourceError, match="cannot decode"):
        PyAVVideoSource(text, gpu=None)
    with pytest.raises(SourceError, match="need stride >= 1"):
        PyAVVideoSource(videos[1], gpu=None, stride=0)
    source = PyAVVideoSource(videos[1], gpu=None)
    source.close()
    assert len(list(source)) <= 1  # closed: at most the frame read on opening, no hang, no error
    source.close()  # twice is fine


def test_open_source_chooses_the_decoder(videos: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    path = videos[1]
    with open_source(path) as cpu:  # the default: OpenCV
        assert type(cpu) is VideoFileSource
    with open_source(path, decode="auto") as auto:  # not on CUDA: OpenCV, silently
        assert type(auto) is VideoFileSource
    with pytest.raises(NvdecUnavailable, match=r"with NVDEC: this run is not on a CUDA device .*--decode cpu"):
        open_source(path, decode="nvdec")
    with pytest.raises(SourceError, match="for video files and .* is not one"):
        open_source(need(COCO_MINI / "val2017"), decode="nvdec")
    with pytest.raises(SourceError, match="decode must be one of auto, cpu, nvdec"):
        open_source(path, decode="gpu")
    with pytest.raises(SourceError, match="not found"):  # a missing video is "not found" whatever decodes it
        open_source(path.with_name("missing.mp4"), decode="nvdec")
    caplog.set_level(logging.INFO, logger="detector.io.sources")
    with open_source(path, decode="auto", gpu=0, start=2) as chosen:  # a CUDA run
        if nvdec_works(path):
            assert type(chosen) is PyAVVideoSource and chosen.gpu == 0
        else:  # no CUDA here: the hardware decoder cannot open, and the run goes on on the CPU
            assert type(chosen) is VideoFileSource
            assert "decoded on the CPU, not NVDEC" in caplog.text
        assert next(iter(chosen)).index == 2
    if not nvdec_works(path):
        with pytest.raises(NvdecUnavailable, match="cannot decode .* with NVDEC: .*; use --decode cpu"):
            open_source(path, decode="nvdec", gpu=0)


def test_nvdec_unavailable_names_the_reason(monkeypatch: pytest.MonkeyPatch, videos: list[Path]) -> None:
    import av.codec.hwaccel

    monkeypatch.setattr(av.codec.hwaccel, "hwdevices_available", lambda: ["vaapi"])
    assert nvdec_unavailable() == "this PyAV's FFmpeg was built without CUDA"
    with pytest.raises(NvdecUnavailable, match="built without CUDA"):
        PyAVVideoSource(videos[1], gpu=0)


def test_cli_decode_errors(videos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    one_line_error(run_cli("run", str(videos[1]), "--device", "cpu", "--decode", "nvdec", "--out", str(out)),
                   "with NVDEC", "--decode cpu")  # fmt: skip
    assert not out.exists()
    several = run_cli("run", str(videos[1]), str(videos[2]), "--decode", "nvdec")
    one_line_error(several, "--decode nvdec is for one video")
    one_line_error(run_cli("run", str(videos[1]), "--decode", "gpu"), "--decode", "nvdec")
