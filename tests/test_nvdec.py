"""Video decoding on NVDEC (PyAV's CUDA hwaccel) and its CPU fallback (issue 21, item 5).

On a machine without CUDA the hardware decoder cannot be opened; everything else -- the NV12 repack
NVDEC's pictures go through, the PyAV source's frames, indices, timestamps and ``info`` against
OpenCV's, the choice and fallback in ``open_source`` and the CLI's errors -- is tested here with
PyAV decoding on the CPU. Where CUDA and NVDEC exist (a lent GPU machine), the same tests check
the hardware-decoded frames against OpenCV's instead of the fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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


def nvdec_works(path: Path) -> bool:  # noqa: D103
    """Whether NVDEC decodes ``path`` on this machine (False on every machine without CUDA)."""
    if not CUDA or nvdec_unavailable() is not None:
        return False
    try:
        PyAVVideoSource(path, gpu=0).close()
    except NvdecUnavailable:
        return False
    return True


def write_video(
    path: Path,
    codec: str = "libx264",
    *,
    pix_fmt: str = "yuv420p",
    size: tuple[int, int] = (320, 240),
    colorspace: int = 2,
    color_range: int = 0,
    frames: int = 24,
    first_pts: int = 0,
    audio: float = 0.0,
    **options: str,
) -> Path:
    """A real video of frames of the shared clip at 25 frames/s: ``codec`` in ``pix_fmt`` with the given
    colour tags (colorspace 1 = BT.709; range 1 = limited, 2 = full), its first frame at ``first_pts``
    ticks of 1/25 s, and ``audio`` seconds of silence beside it (AAC; longer than the video makes the
    container's duration the audio's)."""
    cap = cv2.VideoCapture(str(need(VIDEO)))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.codec_context.colorspace = colorspace
        stream.codec_context.color_range = color_range
        sound = out.add_stream("aac", rate=48000) if audio else None
        for i in range(frames):
            ok, image = cap.read()
            assert ok
            frame = av.VideoFrame.from_ndarray(cv2.resize(image, size), format="bgr24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            for k in range(int(audio * 48000 / 1024)):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, k * 1024
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    cap.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("nvdec")
    return [
        need(VIDEO),  # MS-MPEG4 in AVI, untagged, 768x576
        write_video(folder / "bt709.mp4", colorspace=1, color_range=1, first_pts=3, bf="2", g="12"),
        write_video(folder / "full.mp4", pix_fmt="yuvj420p", colorspace=1, color_range=2, bf="2"),
        write_video(folder / "even-odd.mp4", size=(322, 182), bf="2"),
        write_video(folder / "ten-bit.mp4", pix_fmt="yuv420p10le", colorspace=1, color_range=1),
        write_video(folder / "odd.mkv", "ffv1", size=(321, 241)),  # odd sizes: bicubic and bilinear differ
        write_video(folder / "bframes.avi", "mpeg4", bf="2"),  # AVI: no pts, OpenCV times frames by dts
        write_video(folder / "audio.ts", audio=2.5, bf="2"),  # no frame count: OpenCV's guess from the duration
    ]


H264 = ("bt709.mp4", "full.mp4", "even-odd.mp4", "ten-bit.mp4", "audio.ts")
"""The files NVDEC decodes bit-exactly (H.264 is specified to the bit), so its frames must equal OpenCV's."""


@pytest.mark.parametrize("size", [(241, 321), (240, 320), (101, 64), (2, 2)])
@pytest.mark.parametrize(("colorspace", "color_range"), [(1, 1), (2, 0), (5, 2)])
def test_nv12_converts_as_planar_420(size: tuple[int, int], colorspace: int, color_range: int) -> None:
    """NVDEC's NV12 (and 10-bit P010) pictures give the pixels the planar picture of the same samples
    gives (what CPU decoders give and OpenCV converts), for odd sizes, padded rows and every colour tag;
    converting NV12 directly would not."""
    h, w = size
    image = cv2.imread(str(sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[0]))[:h, :w]
    planar = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24").reformat(format="yuv420p")
    planar.colorspace, planar.color_range = colorspace, color_range
    nv12 = planar.reformat(format="nv12")
    nv12.colorspace, nv12.color_range = colorspace, color_range
    assert nv12.format.name == "nv12"
    want = planar.to_ndarray(format="bgr24", interpolation="BICUBIC")  # what OpenCV's capture gives
    np.testing.assert_array_equal(to_bgr(nv12), want)
    if size == (240, 320) and colorspace == 2:
        direct = nv12.to_ndarray(format="bgr24", interpolation="BICUBIC")
        assert np.abs(direct.astype(int) - want).max() > 0, "converting NV12 directly would do: the repack is moot"
    if w % 2:  # swscale itself drops the last chroma column making an odd-width P010 picture: nothing to compare
        return
    ten = planar.reformat(format="yuv420p10le")
    ten.colorspace, ten.color_range = colorspace, color_range
    p010 = ten.reformat(format="p010le")  # NVDEC's 10-bit output
    p010.colorspace, p010.color_range = colorspace, color_range
    np.testing.assert_array_equal(to_bgr(p010), ten.to_ndarray(format="bgr24", interpolation="BICUBIC"))


def same_as_opencv(path: Path, gpu: int | None, window: dict[str, int], exact: bool = True) -> None:
    with VideoFileSource(path, **window) as ref, PyAVVideoSource(path, gpu=gpu, **window) as ours:
        assert ours.info == ref.info
        assert ours.planned_frames == ref.planned_frames
        want, got = list(ref), list(ours)
    assert [f.index for f in got] == [f.index for f in want] and len(got) > 0
    np.testing.assert_allclose([f.timestamp for f in got], [f.timestamp for f in want], atol=1e-6)
    assert all(f.name == path.stem for f in got)
    for a, b in zip(got, want, strict=True):
        if exact:
            np.testing.assert_array_equal(a.image, b.image, err_msg=f"{path.name} frame {a.index}")
        else:
            assert np.abs(a.image.astype(int) - b.image).mean() < 1.0, (path.name, a.index)


WINDOWS = [{}, {"start": 5, "stride": 3, "end": 20}, {"start": 1}]


@pytest.mark.parametrize("window", WINDOWS)
def test_pyav_frames_equal_opencv(videos: list[Path], window: dict[str, int]) -> None:
    """PyAV's decode on the CPU -- all of the NVDEC source but opening the hardware -- gives OpenCV's frames
    to the pixel, and its indices, timestamps (a stream starting at 0.12 s, B-frames, AVI without pts),
    info (frame rate, the frame count OpenCV guesses for an MPEG-TS) and planned frame count, for 8 and
    10 bits, limited and full range, BT.601 and BT.709, even and odd sizes."""
    for path in videos:
        same_as_opencv(path, None, window)


@pytest.mark.parametrize("window", WINDOWS)
def test_nvdec_frames_equal_opencv(videos: list[Path], window: dict[str, int]) -> None:
    """On a machine with CUDA: NVDEC's frames are OpenCV's, bit for bit for H.264 (specified to the bit),
    within a mean of 1 level for the rest. Opening NVDEC must work where CUDA and PyAV's CUDA are present."""
    why = "no CUDA device here" if not CUDA else nvdec_unavailable()
    if why is not None:
        pytest.skip(f"NVDEC's own frames are checked on a CUDA machine only: {why}")
    for path in videos:
        try:
            PyAVVideoSource(path, gpu=0).close()
        except NvdecUnavailable as exc:
            assert path.name not in H264, f"NVDEC failed on H.264 ({path.name}): {exc}"
            continue
        same_as_opencv(path, 0, window, exact=path.name in H264)


def test_nvdec_failing_midway_hands_over_to_opencv(videos: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """NVDEC failing after some frames (simulated: the decoder raises FFmpeg's error on the 8th frame of a
    source marked as on the GPU): the rest comes from OpenCV, from the next frame on, and the run's frames
    are still OpenCV's throughout."""
    path = videos[1]
    source = PyAVVideoSource(path, gpu=None, start=2, stride=2)
    decoded = source._frames

    def failing() -> Iterator[av.VideoFrame]:
        for i, frame in enumerate(decoded):
            if i == 5:
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    source.gpu, source._frames = 0, failing()  # as an NVDEC source would meet it
    caplog.set_level(logging.WARNING, logger="detector.io.nvdec")
    with source, VideoFileSource(path, start=2, stride=2) as ref:
        got, want = list(source), list(ref)
    assert "NVDEC failed after 8 frames" in caplog.text and "decoding the rest on the CPU" in caplog.text
    assert [f.index for f in got] == [f.index for f in want]
    np.testing.assert_allclose([f.timestamp for f in got], [f.timestamp for f in want], atol=1e-6)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


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
                   "this run is on the CPU", "--device cuda", "--decode cpu")  # fmt: skip
    assert not out.exists()
    folder = tmp_path / "videos"  # a folder of videos: refused before its output folder is made
    folder.mkdir()
    for video in videos[1:3]:
        (folder / video.name).write_bytes(video.read_bytes())
    one_line_error(run_cli("run", str(folder), "--decode", "nvdec", "--device", "cpu", "--out", str(tmp_path / "outs")),
                   "this run is on the CPU")  # fmt: skip
    assert not (tmp_path / "outs").exists()
    several = run_cli("run", str(videos[1]), str(videos[2]), "--decode", "nvdec")
    one_line_error(several, "--decode nvdec is for one video")
    one_line_error(run_cli("run", str(videos[1]), "--decode", "gpu"), "--decode", "nvdec")


def test_the_cli_decodes_on_the_gpu_of_torch_runs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which runs NVDEC is for: the torch engine (``auto`` included: it is torch unless the model is an
    export or int8) on a CUDA device; what ``cuda_index`` says is faked (no CUDA here)."""
    import detector.predictor
    from detector import load_config
    from detector.cli import _run_gpu

    monkeypatch.setattr(detector.predictor, "cuda_index", lambda device: 0 if device != "cpu" else None)
    for overrides, want in [
        ({}, 0),  # engine auto, device auto: torch on the GPU
        ({"engine": "torch", "device": "cuda:0"}, 0),
        ({"device": "cpu"}, None),
        ({"engine": "openvino", "device": "cpu"}, None),
        ({"engine": "onnxruntime", "device": "cpu"}, None),
        ({"precision": "int8"}, None),  # OpenVINO's
    ]:
        cfg = load_config(None, {"model": "retinanet_resnet50_fpn", **overrides})
        assert _run_gpu(cfg, "auto") == want, overrides
        assert _run_gpu(cfg, "cpu") is None
