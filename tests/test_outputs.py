"""Nothing a user gives us is lost: inputs are never outputs, outputs never collide, a stop
signal keeps a playable video and a complete JSONL, a failed start leaves earlier outputs as
they were, and a file is only ever replaced by a complete one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.errors import SinkError
from detector.io import JsonlSink, VideoFileSink, open_source
from detector.planning import plan_outputs

from .conftest import COCO_MINI, DEMO, TORCHSCRIPT, VIDEO, frames_in, need


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def coco_images(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[:n]:
        paths.append(Path(shutil.copy(src, folder / src.name)))
    return paths


# -- inputs are never outputs (item 1), no two outputs share a file (item 4) ----------------


@pytest.mark.parametrize("spec", ["folder", "glob"])
def test_folder_output_over_its_input_is_refused(tmp_path: Path, spec: str) -> None:
    folder = tmp_path / "imgs"
    coco_images(folder)
    before = tree_digest(folder)
    source_spec = str(folder) if spec == "folder" else str(folder / "*.jpg")
    with open_source(source_spec) as source, pytest.raises(SinkError, match="would overwrite the input"):
        plan_outputs(source, folder, None)
    assert tree_digest(folder) == before


def test_every_output_is_checked_against_every_input(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    a, b = coco_images(folder)
    with open_source(str(folder)) as source:
        with pytest.raises(SinkError, match="would overwrite the input"):
            plan_outputs(source, tmp_path / "out", b)  # --json naming the second input image
    with open_source(str(a)) as source, pytest.raises(SinkError, match="would overwrite the input"):
        plan_outputs(source, tmp_path / "x.jpg", a)


def test_two_outputs_naming_one_file_are_refused(tmp_path: Path) -> None:
    with open_source(str(DEMO)) as source, pytest.raises(SinkError, match="same file"):
        plan_outputs(source, tmp_path / "o.mp4", tmp_path / "sub" / ".." / "o.mp4")
    with open_source(str(DEMO)) as source, pytest.raises(SinkError, match="same file"):
        plan_outputs(source, tmp_path / "o.mp4", None, stats=tmp_path / "o.jsonl")


def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A finished output is renamed into place: over a device or a pipe (``--json /dev/null``
    as root) that would replace it. A FIFO stands in for a device here."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for out, json_path in ((None, fifo), (fifo.with_suffix(".mp4"), None)):
        if out is not None:
            os.mkfifo(out)
        with open_source(str(DEMO)) as source, pytest.raises(SinkError, match="not a regular file") as err:
            plan_outputs(source, out, json_path)
        assert "\n" not in str(err.value)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISFIFO(fifo.with_suffix(".mp4").stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.jsonl", "pipe.mp4"]


def test_an_output_replaces_only_an_earlier_output_of_its_kind(tmp_path: Path) -> None:
    """Stats may replace a .json, detections a .jsonl, a video a video; anything else is refused
    (``--stats clip.mp4`` once left a video holding 1 kB of JSON). The refusals are in test_bad_inputs."""
    for name in ("o.mp4", "o.jsonl", "s.json"):
        (tmp_path / name).write_bytes(b"earlier")
    with open_source(str(DEMO)) as source:
        plan = plan_outputs(source, tmp_path / "o.mp4", tmp_path / "o.jsonl", stats=tmp_path / "s.json")
    assert (plan.out, plan.json, plan.stats) == (tmp_path / "o.mp4", tmp_path / "o.jsonl", tmp_path / "s.json")
    for json_path, stats, kind in (("s.json", None, ".jsonl"), ("o.mp4", None, ".jsonl"),
                                   ("new.jsonl", "o.jsonl", ".json"), ("new.jsonl", "o.mp4", ".json")):  # fmt: skip
        with open_source(str(DEMO)) as source, pytest.raises(SinkError, match=f"is not a \\{kind} file") as err:
            plan_outputs(source, tmp_path / "new.mp4", tmp_path / json_path,
                         stats=tmp_path / stats if stats else None)  # fmt: skip
        assert "\n" not in str(err.value)
    assert all((tmp_path / n).read_bytes() == b"earlier" for n in ("o.mp4", "o.jsonl", "s.json"))


# -- default outputs never collide (item 5) ---------------------------------------------------


def test_default_outputs_are_numbered_not_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (src_a,) = coco_images(tmp_path / "in", 1)
    png = tmp_path / "in" / "a.png"
    jpg = tmp_path / "in" / "a.jpg"
    cv2.imwrite(str(png), cv2.imread(str(src_a)))
    shutil.copy(src_a, jpg)
    planned = []
    for path in (png, jpg, jpg):
        with open_source(str(path)) as source:
            plan = plan_outputs(source, None, None)
        assert plan.out is not None and plan.json is not None
        plan.out.write_bytes(b"earlier")  # as a finished run would leave them
        plan.json.write_bytes(b"earlier")
        planned.append((plan.out.as_posix(), plan.json.as_posix()))
    assert planned == [
        ("runs/a.png", "runs/a.jsonl"),
        ("runs/a-2.jpg", "runs/a-2.jsonl"),  # a.jsonl is taken by the .png
        ("runs/a-3.jpg", "runs/a-3.jsonl"),
    ]
    shutil.copy(DEMO, tmp_path / "clip.avi")
    shutil.copy(DEMO, tmp_path / "clip.mp4")
    outs = []
    for name in ("clip.avi", "clip.mp4"):
        with open_source(str(tmp_path / name)) as source:
            plan = plan_outputs(source, None, None)
        assert plan.out is not None
        plan.out.write_bytes(b"earlier")
        outs.append(plan.out.as_posix())
    assert outs == ["runs/clip.mp4", "runs/clip-2.mp4"]


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector", "-q", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)  # fmt: skip


def test_glob_across_folders_keeps_relative_paths(tmp_path: Path) -> None:
    images = sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[:2]
    for cam, src in zip(("cam1", "cam2"), images, strict=True):
        (tmp_path / "cams" / cam).mkdir(parents=True)
        shutil.copy(src, tmp_path / "cams" / cam / "img.jpg")
    res = run_cli("run", "cams/*/img.jpg", "--model", str(TORCHSCRIPT), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "runs" / "cams"  # named after the folder before the first wildcard
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["cam1/img.jpg", "cam2/img.jpg"]
    lines = [json.loads(x) for x in (tmp_path / "runs" / "cams.jsonl").read_text().splitlines()]
    assert [r["image"] for r in lines] == ["cam1/img.jpg", "cam2/img.jpg"]
    assert tree_digest(tmp_path / "cams") == {
        "cam1/img.jpg": digest(images[0]),
        "cam2/img.jpg": digest(images[1]),
    }


# -- stop signals (item 2) -----------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_stop_signal_keeps_a_playable_video_and_complete_jsonl(tmp_path: Path, sig: int, code: int) -> None:
    out, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    out.write_bytes(b"an earlier output")
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "-q", "run", str(need(VIDEO)), "--model", str(TORCHSCRIPT),
         "--out", str(out), "--json", str(jsonl)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partial = next(tmp_path.glob("out.partial-*.jsonl"), None)
            if partial is not None and len(partial.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
        else:
            pytest.fail("the run wrote no frames within 120 s")
        assert out.read_bytes() == b"an earlier output", "the earlier output stays until the new one is complete"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    name = signal.Signals(sig).name
    assert err.strip().splitlines() == [err.strip()] and f"interrupted by {name}" in err, err
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(lines) >= 3 and [r["frame"] for r in lines] == list(range(len(lines)))
    assert frames_in(out) == len(lines), "the video is finalised (playable) with one frame per JSON line"
    assert not list(tmp_path.glob("*partial*"))


# -- a failed start touches no output (item 3) -------------------------------------------------


def _earlier_outputs(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    out, jsonl = tmp_path / "prev.mp4", tmp_path / "prev.jsonl"
    res = run_cli("run", str(DEMO), "--model", str(TORCHSCRIPT), "--max-frames", "2", "--out", str(out),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out, jsonl, {"mp4": digest(out), "jsonl": digest(jsonl)}


def test_failed_start_leaves_earlier_outputs_intact(tmp_path: Path) -> None:
    out, jsonl, before = _earlier_outputs(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        for serve, message in (
            (f"127.0.0.1:{port}", "already in use"),
            ("no-such-host.invalid:8080", "cannot be resolved"),
            ("192.0.2.1:8080", "not an address of this machine"),  # TEST-NET-1: never local
        ):
            res = run_cli("run", str(DEMO), "--model", str(TORCHSCRIPT), "--out", str(out), "--serve", serve,
                          cwd=tmp_path)  # fmt: skip
            assert res.returncode == 2, res.stderr
            assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert message in res.stderr
            assert {"mp4": digest(out), "jsonl": digest(jsonl)} == before, f"--serve {serve} touched the outputs"
    finally:
        taken.close()
    assert frames_in(out) == 2
    assert not list(tmp_path.glob("*partial*"))


def test_sinks_replace_a_file_only_when_complete(tmp_path: Path) -> None:
    video, jsonl = tmp_path / "v.mp4", tmp_path / "d.jsonl"
    video.write_bytes(b"earlier")
    jsonl.write_text("earlier\n")
    frame = np.zeros((48, 64, 3), np.uint8)
    with VideoFileSink(video, 10.0, (64, 48)) as sink, JsonlSink(jsonl) as lines:
        sink.write(frame)
        lines.write_record({"frame": 0})
        assert video.read_bytes() == b"earlier" and jsonl.read_text() == "earlier\n"
    assert frames_in(video) == 1 and jsonl.read_text() == '{"frame":0}\n'
    # an error before any frame: the earlier file stays and no temporary file is left
    with pytest.raises(RuntimeError), VideoFileSink(video, 10.0, (64, 48)):
        raise RuntimeError("model failed")
    assert frames_in(video) == 1
    # an error after some frames: the earlier file stays, the new frames are kept beside it
    with pytest.raises(RuntimeError), JsonlSink(jsonl) as lines:
        lines.write_record({"frame": 7})
        raise RuntimeError("model failed")
    assert jsonl.read_text() == '{"frame":0}\n'
    assert (tmp_path / "d.incomplete.jsonl").read_text() == '{"frame":7}\n'
    # Ctrl-C / SIGTERM after some frames: finalised and renamed into place
    with pytest.raises(KeyboardInterrupt), JsonlSink(jsonl) as lines:
        lines.write_record({"frame": 9})
        raise KeyboardInterrupt
    assert jsonl.read_text() == '{"frame":9}\n'
    assert not list(tmp_path.glob("*partial*"))


def test_unwritable_output_folder_fails_before_the_model(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run_cli("run", str(DEMO), "--model", str(TORCHSCRIPT), "--out", str(blocker / "o.mp4"), cwd=tmp_path)
    assert res.returncode == 2 and "cannot create output folder" in res.stderr, res.stderr
    res = run_cli("run", str(DEMO), "--model", str(TORCHSCRIPT), "--stats", str(blocker / "s.json"), cwd=tmp_path)
    assert res.returncode == 2 and "cannot create output folder" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_stop_before_the_first_frame_keeps_the_earlier_files(tmp_path: Path) -> None:
    """A stop signal (KeyboardInterrupt) after the outputs opened but before any frame replaced earlier
    files with empty ones (a 262-byte MP4 and an empty JSONL): now nothing is renamed into place."""
    video, jsonl = tmp_path / "x.mp4", tmp_path / "x.jsonl"
    for path in (video, jsonl):
        path.write_bytes(b"an earlier run's output")
    with pytest.raises(KeyboardInterrupt):
        with VideoFileSink(video, 10.0, (64, 48)), JsonlSink(jsonl):
            raise KeyboardInterrupt
    assert video.read_bytes() == jsonl.read_bytes() == b"an earlier run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl", "x.mp4"]
