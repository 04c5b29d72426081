"""Out of room and time that lies (issue 19, items 5 and 6).

- A full disk (ENOSPC) or a file-size limit (EFBIG, ``ulimit -f``) in any sink ends the run with
  one line (``error: ...``, exit 2, no traceback) that says truthfully what was kept: a file that
  decodes, with the frames or lines it holds, or nothing (an unfinished file is removed).
- A video whose header rate disagrees with its frames' timestamps: ``time`` in the JSON Lines is
  each frame's own time and the output is written at the measured rate, so it keeps the duration.
- A file name that is not valid UTF-8 is written to the JSON Lines as valid Unicode, losslessly.
"""

from __future__ import annotations

import base64
import errno
import fractions
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av  # PyAV (a dependency) writes the video whose header lies
import cv2
import numpy as np
import pytest

from detector import Detections
from detector.errors import SinkError
from detector.io import Frame, ImageSink, JsonlSink, open_source
from detector.io.sinks import write_text_atomic
from detector.io.sources import VideoFileSource

from .conftest import DEMO, ROOT, read_video

MODEL = ROOT / "detector" / "data" / "d2go_faster_rcnn_fbnetv3a_c4_coco_int8.torchscript.pt"
"""The int8 model shipped in the repository: small and fast enough for a subprocess run."""

# ---------------------------------------------------------------------------------------------
# Item 5: out of room


def run_cli_limited(out: Path, *, fsize_kb: int | None = None) -> subprocess.CompletedProcess[str]:
    """``detector -q run DEMO --out OUT`` in a real subprocess, under ``ulimit -f`` when given.
    CPython ignores SIGXFSZ at start-up, so a write past the limit fails with EFBIG instead of
    the kernel killing the process."""
    cmd = [sys.executable, "-m", "detector", "-q", "run", str(DEMO), "--model", str(MODEL), "--out", str(out)]
    if fsize_kb is not None:
        cmd = ["bash", "-c", f'ulimit -f {fsize_kb} && exec "$@"', "bash", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=out.parent)


def check_one_line_and_what_was_kept(proc: subprocess.CompletedProcess[str], out: Path, reason: str) -> str:
    """Exit 2 with one ``error:`` line and no traceback; every file the line names holds what it
    claims (the video decodes with OpenCV to exactly that many frames, close to the input's; the
    JSON Lines file has that many whole lines); an unkept video left no file behind."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    message = lines[0]
    assert reason in message, message
    assert not list(out.parent.glob("*.partial-*")), "a temporary file was left behind"
    video = re.search(r"the first (\d+) frames? (?:is|are) in (\S+?);", message) or re.search(
        r"the first frame is in (\S+?);", message
    )
    if video is None:
        assert "no video was kept" in message
        assert not out.exists() and not list(out.parent.glob(f"{out.stem}.incomplete*{out.suffix}"))
    else:
        claimed, kept = (int(video[1]), Path(video[2])) if video.re.groups == 2 else (1, Path(video[1]))
        assert kept.exists() and claimed > 0
        frames = read_video(kept)
        assert len(frames) == claimed, f"{kept} decodes to {len(frames)} frames, the message says {claimed}"
        source = read_video(DEMO)[:claimed]
        for i, (got, want) in enumerate(zip(frames, source, strict=True)):  # annotated, so close, not equal
            diff = float(np.mean(cv2.absdiff(got, want)))
            assert diff < 12, f"frame {i} of {kept} is not frame {i} of the input (mean difference {diff:.1f})"
    jsonl = re.search(r"the detections of (\d+) frames? are in (\S+?);", message)
    if jsonl is not None:
        records = [json.loads(line) for line in Path(jsonl[2]).read_bytes().decode("utf-8").splitlines()]
        assert [r["frame"] for r in records] == list(range(int(jsonl[1])))
    else:
        assert "no detections were kept" in message
    return message


@pytest.mark.parametrize(
    "suffix",
    [
        ".mp4",  # H.264 through PyAV: no room for the index, nothing plays, the file is removed
        ".avi",  # OpenCV's MJPG: ignores write errors; the frames that made it to disk still play
    ],
)
def test_file_size_limit_is_one_line_that_says_what_was_kept(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"x{suffix}"
    proc = run_cli_limited(out, fsize_kb=100)
    message = check_one_line_and_what_was_kept(proc, out, "the file size limit was reached (File too large)")
    assert ("no video was kept" in message) == (suffix == ".mp4")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 kB tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    mount = shutil.which("mount")
    if mount is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize(
    "suffix",
    [
        ".mkv",  # H.264 through PyAV in Matroska: what was written before ENOSPC still plays
        ".avi",  # OpenCV's MJPG: its silent write errors found by the free space left
    ],
)
def test_full_disk_is_one_line_that_says_what_was_kept(small_disk: Path, suffix: str) -> None:
    out = small_disk / f"x{suffix}"
    proc = run_cli_limited(out)
    message = check_one_line_and_what_was_kept(proc, out, "the disk is full (No space left on device)")
    assert "free some space" in message


def frame(i: int, name: str = "clip") -> Frame:
    return Frame(i, i / 10, np.zeros((8, 8, 3), np.uint8), name)


def test_jsonl_out_of_room_keeps_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process ENOSPC (for machines that cannot mount a small disk): the third line is half
    written when the disk fills; the file is cut back to two whole lines, and the error says so."""
    path = tmp_path / "d.jsonl"
    real_write = os.write
    sink = JsonlSink(path)
    calls = 0

    def write(fd: int, data: Any) -> int:
        nonlocal calls
        if fd != sink._file.fileno():
            return real_write(fd, data)
        calls += 1
        if calls == 3:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write, as at the last free block
        if calls > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(SinkError) as info, sink:
        for i in range(5):
            sink.write(frame(i), Detections.empty())
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {path}: the disk is full (No space left on device)")
    assert f"the detections of 2 frames are in {path}" in message
    assert [json.loads(line)["frame"] for line in path.read_bytes().decode("utf-8").splitlines()] == [0, 1]
    assert not list(tmp_path.glob("*.partial-*"))


def test_images_and_stats_out_of_room_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process EFBIG/ENOSPC for the annotated images and the stats file: one line that says
    what was kept; no temporary file left; an earlier stats file stays as it was."""
    import detector.io.sinks as sinks

    real_open = open
    opened = 0

    def limited_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        if "partial-" in os.fsdecode(file) and "w" in mode:
            opened += 1
            if opened > 2:
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(sinks, "open", limited_open, raising=False)
    folder = tmp_path / "annotated"
    with pytest.raises(SinkError) as info, ImageSink(folder, folder=True) as images:
        for i in range(4):
            images.write(frame(i, f"{i}.jpg"))
    message = str(info.value)
    assert "\n" not in message and "the file size limit was reached (File too large)" in message
    assert f"the 2 images written before are in {folder}" in message
    assert sorted(p.name for p in folder.iterdir()) == ["0.jpg", "1.jpg"]

    stats = tmp_path / "stats.json"
    stats.write_text("{}\n")

    def no_room(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", no_room)
    with pytest.raises(SinkError) as info:
        write_text_atomic(stats, '{"frames": 1}\n')
    monkeypatch.undo()
    assert str(info.value).startswith(f"cannot write {stats}: the disk is full")
    assert f"it was not written ({stats} is left as it was)" in str(info.value)
    assert stats.read_text() == "{}\n"
    assert not list(tmp_path.glob("*.partial-*"))


# ---------------------------------------------------------------------------------------------
# Item 6: time from the frames, not from the header


def make_header_fps_mismatch(path: Path, n: int = 60) -> None:
    """60 frames 1/30 s apart in an MP4 whose header claims 30.5 frames/s (OpenCV's CAP_PROP_FPS).

    FFmpeg's ``avg_frame_rate`` (what OpenCV 5 reports) is frames / the sum of the header's sample
    durations, and an MP4's last sample duration comes from the last packet's own duration: cut
    to one tick, the sum is 59/30 s, so the header says 60 / (59/30) = 30.51 frames/s while every
    frame is 1/30 s after the one before (``CAP_PROP_POS_MSEC``). Recorders that stop abruptly
    write such files (``car_traffic_small.mp4`` says 30.1875). The same with the ffmpeg command::

        ffmpeg -f lavfi -i testsrc2=size=160x120:rate=30 -frames:v 60 -c:v libx264 -bf 0 a.mp4
        ffmpeg -i a.mp4 -c copy -bsf:v "setts=duration=if(eq(N\\,59)\\,1\\,DURATION)" b.mp4
    """
    tb = fractions.Fraction(1, 15360)
    step = 512  # 1/30 s
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"bf": "0", "g": "30"}
        stream.time_base = tb
        base = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        packets = []
        for i in range(n):
            img = np.roll(base, i * 3, axis=1).copy()
            cv2.putText(img, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
            video_frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            video_frame.pts, video_frame.time_base = i * step, tb
            packets += stream.encode(video_frame)
        packets += stream.encode()
        for packet in packets:  # the encoder's time base is 1/30: to the stream's, where one tick is 1/15360 s
            scale = int(packet.time_base / tb)
            packet.pts, packet.dts, packet.duration = packet.pts * scale, packet.dts * scale, step
            packet.time_base = tb
        packets[-1].duration = 1  # the last sample: one tick
        for packet in packets:
            container.mux(packet)


def test_time_and_output_rate_come_from_the_frames(tmp_path: Path) -> None:
    """Fails on the code before: info.fps 30.51 (the header), frame 59 at 59/30.51 = 1.934 s
    instead of 1.967 s, and the output written at 30.51 frames/s plays short."""
    from detector.cli import main

    path = tmp_path / "lying_header.mp4"
    make_header_fps_mismatch(path)
    cap = cv2.VideoCapture(str(path))
    try:  # the recipe reproduces the mismatch as OpenCV sees it
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(60 / (59 / 30), rel=1e-3)
        times = []
        while cap.grab():
            times.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
    finally:
        cap.release()
    assert times == pytest.approx([i / 30 for i in range(60)], abs=1e-3)

    with open_source(path) as source:
        assert isinstance(source, VideoFileSource)
        assert source.info.fps == pytest.approx(30, rel=1e-4)
        got = [(f.index, f.timestamp) for f in source]
    assert [i for i, _ in got] == list(range(60))
    assert [t for _, t in got] == pytest.approx([i / 30 for i in range(60)], abs=1e-4)
    reference = read_video(path)
    with VideoFileSource(path, start=41, stride=4) as source:  # frame-exact, and its own time
        got_frames = [(f.index, f.timestamp, f.image) for f in source]
    assert [i for i, _, _ in got_frames] == list(range(41, 60, 4))
    assert [t for _, t, _ in got_frames] == pytest.approx([i / 30 for i in range(41, 60, 4)], abs=1e-4)
    assert all(np.array_equal(image, reference[i]) for i, _, image in got_frames)

    out, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert main(["-q", "run", str(path), "--model", str(MODEL), "--start", "48", "--out", str(out),
                 "--json", str(jsonl)]) == 0  # fmt: skip
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(48, 60))
    assert [r["time"] for r in records] == pytest.approx([i / 30 for i in range(48, 60)], abs=1e-5)
    cap = cv2.VideoCapture(str(out))
    try:
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30, rel=1e-3)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    finally:
        cap.release()


def test_non_utf8_names_are_valid_unicode_and_lossless(tmp_path: Path) -> None:
    """``b"\\xff.jpg"`` reaches Python as ``"\\udcff.jpg"``; the JSON Lines must not carry that lone
    surrogate (as the escape ``\\udcff`` it is no Unicode text: strict readers reject it). Fails
    on the code before: the line holds ``"image":"\\udcff.jpg"``."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = np.full((16, 16, 3), 128, np.uint8)
    names = [b"\xff.jpg", "caf\u00e9.jpg".encode(), b"plain.jpg"]
    for raw in names:
        ok, data = cv2.imencode(".jpg", image)
        assert ok
        (folder / os.fsdecode(raw)).write_bytes(data.tobytes())  # b"\xff" becomes "\udcff" and back
    out = tmp_path / "d.jsonl"
    annotated = tmp_path / "annotated"
    with (
        open_source(folder) as source,
        JsonlSink(out, with_image=True) as sink,
        ImageSink(annotated, folder=True) as images,
    ):
        for f in source:
            sink.write(f, Detections.empty())
            images.write(f)
    text = out.read_bytes().decode("utf-8", errors="strict")
    records = [json.loads(line) for line in text.splitlines()]

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for record in records:
        for s in strings(record):
            s.encode("utf-8", errors="strict")  # a lone surrogate raises here, as in strict readers
    by_bytes = {
        base64.b64decode(r["image_bytes_b64"]) if "image_bytes_b64" in r else r["image"].encode(): r for r in records
    }
    assert sorted(by_bytes) == sorted(names)
    assert by_bytes[b"\xff.jpg"]["image"] == "\ufffd.jpg"  # readable, and the bytes are exact
    assert "image_bytes_b64" not in by_bytes["caf\u00e9.jpg".encode()]  # valid names unchanged
    assert by_bytes["caf\u00e9.jpg".encode()]["image"] == "caf\u00e9.jpg"
    assert sorted(os.listdir(os.fsencode(annotated))) == sorted(names)  # the image keeps its exact name
