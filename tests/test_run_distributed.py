"""``detector run`` over a folder of videos, and over folders in several processes (torchrun, gloo
on CPU): the same files, the same JSON lines and the same frames as one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch

from detector.cli import main

from .conftest import COCO_MINI, DEMO, frames_in, need
from .test_outputs import digest, tree_digest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default; one thread everywhere: identical numbers
MODEL = ["--model", "d2go", "--score", "0.3"]  # real detections; deterministic


def make_clips(folder: Path, names: tuple[str, ...] = ("a.mp4", "b.avi", "c.mp4"), frames: int = 8) -> list[Path]:
    """Short clips cut from the demo clip, at 256x192: mp4 (mp4v) or avi (MJPG) by name."""
    need(DEMO)
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(DEMO))
    paths = []
    try:
        for name in names:
            path = folder / name
            fourcc = "MJPG" if name.endswith(".avi") else "mp4v"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 10.0, (256, 192))
            for _ in range(frames):
                ok, frame = cap.read()
                assert ok
                writer.write(cv2.resize(frame, (256, 192), interpolation=cv2.INTER_AREA))
            writer.release()
            paths.append(path)
    finally:
        cap.release()
    return paths


def image_folder(folder: Path, n: int = 6) -> None:
    """The first ``n`` coco-mini images, halved (320 px wide or so) to keep the model quick."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[:n]:
        image = cv2.imread(str(src))
        cv2.imwrite(str(folder / src.name), cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 -m detector -q run ARGS`` on CPU (gloo)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run([*launch, "-m", "detector", "-q", "run", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)  # fmt: skip


@pytest.fixture
def one_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The single-process reference runs here (no second interpreter to start), on one thread as
    each torchrun process does, from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- a folder of videos, one process --------------------------------------------------------


def test_folder_of_videos_writes_one_video_and_jsonl_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_clips(tmp_path / "clips", frames=4)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second run is numbered, never replacing the first
        assert main(["-q", "run", "clips", *MODEL, "--max-frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 frames" in out and "(3 videos)" in out and "annotated: runs/clips-2" in out, out
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["clips", "clips-2"]
    for folder in (runs / "clips", runs / "clips-2"):
        assert sorted(p.name for p in folder.iterdir()) == [
            "a.jsonl", "a.mp4", "b.jsonl", "b.mp4", "c.jsonl", "c.mp4"
        ]  # fmt: skip
        for stem in "abc":
            lines = jsonl(folder / f"{stem}.jsonl")
            assert [r["frame"] for r in lines] == [0, 1] and "image" not in lines[0]
            assert frames_in(folder / f"{stem}.mp4") == 2
    assert jsonl(runs / "clips" / "b.jsonl") == jsonl(runs / "clips-2" / "b.jsonl")
    assert sum(len(r["detections"]) for r in jsonl(runs / "clips" / "a.jsonl")) > 0  # type: ignore[arg-type]
    assert not list(tmp_path.rglob("*.partial-*"))


def test_folder_of_videos_mistakes_are_one_line_and_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = tmp_path / "clips"
    make_clips(clips, frames=2)
    before = tree_digest(clips)

    def error(*args: str) -> str:
        assert main(["-q", "run", *args, *MODEL]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: "), err
        return err

    assert "would overwrite the input" in error(str(clips), "--out", str(clips))  # b.avi -> b.mp4 is fine, a.mp4 not
    assert "drop --json" in error(str(clips), "--json", str(tmp_path / "x.jsonl"))
    assert "give --out a folder" in error(str(clips), "--out", str(tmp_path / "x.mp4"))
    assert "watch one input" in error(str(clips), "--serve", "0")
    shutil.copy(clips / "a.mp4", clips / "a.mov")
    assert "would both be written as a.mp4" in error(str(clips), "--out", str(tmp_path / "o"))
    (clips / "a.mov").unlink()
    mixed = tmp_path / "mixed"
    image_folder(mixed, 1)
    shutil.copy(clips / "a.mp4", mixed)
    line = error(str(mixed))
    assert "holds both images (1) and videos (1)" in line and f"'{mixed}/*.jpg'" in line, line
    assert "give a glob of one kind" in error(str(mixed / "*"))
    assert tree_digest(clips) == before
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# -- several processes: the same outputs as one -----------------------------------------------


def test_torchrun_image_folder_equals_one_process(tmp_path: Path, one_process: None) -> None:
    image_folder(tmp_path / "imgs", 6)
    assert main(["-q", "run", "imgs", *MODEL]) == 0
    two = torchrun("imgs", *MODEL, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = tmp_path / "runs"  # default names, numbered once by rank 0
    assert sorted(p.name for p in runs.iterdir()) == ["imgs", "imgs-2", "imgs-2.jsonl", "imgs.jsonl"]
    lines = jsonl(runs / "imgs.jsonl")
    assert [r["frame"] for r in lines] == list(range(6)) and sum(len(r["detections"]) for r in lines) > 0  # type: ignore[arg-type]
    assert jsonl(runs / "imgs-2.jsonl") == lines
    assert tree_digest(runs / "imgs-2") == tree_digest(runs / "imgs")  # the same annotated images, byte for byte
    assert len(tree_digest(runs / "imgs")) == 6
    assert two.stdout.startswith("6 frames, ") and two.stdout.count(" frames/s") == 1  # rank 0 reports
    assert "(2 processes)" in two.stdout
    assert "detections: runs/imgs-2.jsonl" in two.stdout


def test_torchrun_video_folder_equals_one_process(tmp_path: Path, one_process: None) -> None:
    make_clips(tmp_path / "clips", frames=6)
    assert main(["-q", "run", "clips", *MODEL, "--out", "one"]) == 0
    two = torchrun("clips", *MODEL, "--out", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["a.jsonl", "a.mp4", "b.jsonl", "b.mp4", "c.jsonl", "c.mp4"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for stem in "abc":
        assert jsonl(tmp_path / "two" / f"{stem}.jsonl") == jsonl(tmp_path / "one" / f"{stem}.jsonl")
        assert frames_in(tmp_path / "two" / f"{stem}.mp4") == frames_in(tmp_path / "one" / f"{stem}.mp4") == 6
    assert two.stdout.startswith("18 frames, ") and two.stdout.count(" frames/s") == 1, two.stdout
    assert "(3 videos, 2 processes)" in two.stdout


def test_error_on_one_process_ends_all_with_one_line(tmp_path: Path) -> None:
    """Process 1 cannot write its first image; process 0 finishes its share, then both exit 2 by
    themselves -- started without torchrun, so nothing else would stop a waiting process -- and
    one line names the error; the JSON lines done are kept, as in one process."""
    image_folder(tmp_path / "imgs", 4)
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    (tmp_path / "out" / names[1]).mkdir(parents=True)  # image 1 is process 1's; a folder blocks it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "detector", "-q", "run", "imgs", *MODEL, "--out", "out"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for rank in range(2)
    ]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], results
    stderr = results[0][1] + results[1][1]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: process 1 of 2: cannot write out/{names[1]} (Is a directory); choose a writable "
                      "--out path"], stderr  # fmt: skip
    assert results[1][1].count("Traceback") == 0 and results[0][0] == results[1][0] == ""
    assert [r["image"] for r in jsonl(tmp_path / "out.jsonl")] == [names[0], names[2]]
    assert digest(tmp_path / "out" / names[0]) != digest(tmp_path / "imgs" / names[0])  # annotated
    assert not list(tmp_path.glob("out.part*"))
