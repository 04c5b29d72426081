"""``detector run SRC1 SRC2 ...`` and ``--sources FILE``: several sources, per-source outputs (detector.multi_run),
on real video files and real MJPEG servers on loopback, with the shipped d2go model and few frames."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import detector
from detector import multi_run
from detector.cli import main

from .conftest import ROOT, frames_in
from .stream_server import MjpegServer, jpeg_frames

MODEL = ["--model", "d2go"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def videos(tmp_path: Path) -> tuple[Path, Path, Path]:
    made = tuple(tmp_path / f"{name}.mp4" for name in ("a", "b", "c"))
    for path in made:
        shutil.copy(detector.DEMO_CLIP, path)
    return made  # type: ignore[return-value]


def test_two_videos_give_one_video_and_one_jsonl_each(videos: tuple[Path, ...], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "run", str(videos[0]), str(videos[1]), "--out", str(out), *MODEL, "--max-frames", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "a.mp4", "b.jsonl", "b.mp4"]
    for name in ("a", "b"):
        records = lines(out / f"{name}.jsonl")
        assert len(records) == 3 == frames_in(out / f"{name}.mp4")  # --max-frames counts per source
        assert {r["source"] for r in records} == {name}
        assert [r["frame"] for r in records] == [0, 1, 2]


def test_sources_file_names_comments_and_refused_sources(
    videos: tuple[Path, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names and comments in a --sources file; a missing file and a stream that refuses every
    connection are reported, and the other sources still run to the end."""
    monkeypatch.setattr(multi_run, "GIVE_UP_S", 1.0)
    refused = MjpegServer(jpeg_frames(detector.DEMO_CLIP, n=2), start=False)  # its port refuses connections
    listing = tmp_path / "sources.txt"
    listing.write_text(
        f"# the front door\ndoor={videos[0]}\n\n   # a comment line\n{videos[1]}  # named b from its file\n"
        f"gone={tmp_path / 'missing.mp4'}\nyard={refused.url.replace('http://', 'http://user:secret@')}\n"
    )
    out = tmp_path / "out"
    assert main(["-q", "run", "--sources", str(listing), "--out", str(out), *MODEL, "--max-frames", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b.jsonl", "b.mp4", "door.jsonl", "door.mp4"]
    assert {r["source"] for r in lines(out / "door.jsonl")} == {"door"}
    assert len(lines(out / "b.jsonl")) == 2 == frames_in(out / "b.mp4")
    captured = capsys.readouterr()
    assert "gone: no frame" in captured.err and "yard: no frame" in captured.err
    assert "secret" not in captured.out + captured.err


def test_sigterm_with_three_sources_keeps_every_output_complete(videos: tuple[Path, ...], tmp_path: Path) -> None:
    """Two files and a live MJPEG stream; SIGTERM once each has written a frame: exit 143, every
    output finalised under its name, playable, and each file's video holds one frame per JSON line."""
    out = tmp_path / "out"
    with MjpegServer(jpeg_frames(detector.DEMO_CLIP, n=20), fps=10.0) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector", "-q", "run", str(videos[0]), str(videos[1]), f"cam={server.url}",
             "--out", str(out), *MODEL],  # fmt: skip
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                partial = list(out.glob("*.partial-*.jsonl")) if out.is_dir() else []
                if len(partial) == 3 and all(p.stat().st_size > 0 for p in partial):
                    break
                time.sleep(0.1)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "a.mp4", "b.jsonl", "b.mp4", "cam.jsonl", "cam.mp4"]
    for name in ("a", "b"):
        n = len(lines(out / f"{name}.jsonl"))
        assert n >= 1 and frames_in(out / f"{name}.mp4") == n
    assert frames_in(out / "cam.mp4") >= len(lines(out / "cam.jsonl")) >= 1  # a live recording keeps its timing
    assert {r["source"] for r in lines(out / "cam.jsonl")} == {"cam"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{a}", "{sub}/a.mp4"], "would both be named a"),
        (["{a}", "{b}", "--out", "{tmp}"], "would overwrite the input"),
        (["{a}", "{b}", "--json", "{tmp}/x.jsonl"], "--json"),
        (["{a}", "{tmp}"], "run it alone"),
        (["{a}", "{b}", "--batch-size", "2"], "batched across sources"),
        (["{a}", "0"], "nothing to do"),
    ],
)
def test_refusals_are_one_line_and_touch_nothing(
    videos: tuple[Path, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(videos[0], tmp_path / "sub" / "a.mp4")
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.rglob("*")}
    subs = {"a": str(videos[0]), "b": str(videos[1]), "sub": str(tmp_path / "sub"), "tmp": str(tmp_path)}
    assert main(["-q", "run", *(a.format(**subs) for a in args), *MODEL]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.rglob("*")} == before


def test_one_source_gives_exactly_todays_outputs(videos: tuple[Path, ...], tmp_path: Path) -> None:
    """One positional source still takes today's path: same files, same lines (no "source" key)."""
    from detector import Detector
    from detector.config import load_config
    from detector.runner import run

    assert main(["-q", "run", str(videos[0]), "--out", str(tmp_path / "cli" / "a.mp4"), *MODEL,
                 "--max-frames", "3"]) == 0  # fmt: skip
    model = Detector.from_config(load_config(None, {"model": "d2go"}), progress=False)
    run(model, videos[0], out=tmp_path / "api" / "a.mp4", max_frames=3, progress=False)
    for which in ("cli", "api"):
        assert sorted(p.name for p in (tmp_path / which).iterdir()) == ["a.jsonl", "a.mp4"]
    assert (tmp_path / "cli" / "a.jsonl").read_text() == (tmp_path / "api" / "a.jsonl").read_text()
    assert "source" not in lines(tmp_path / "cli" / "a.jsonl")[0]
    assert frames_in(tmp_path / "cli" / "a.mp4") == frames_in(tmp_path / "api" / "a.mp4") == 3


@pytest.fixture(scope="module")
def d2go() -> detector.Detector:
    return detector.load("d2go")


def test_the_api_runs_several_sources_with_sinks_of_its_own(
    d2go: detector.Detector, videos: tuple[Path, ...], tmp_path: Path
) -> None:
    """``detector.run(model, {name: spec}, sinks=[...])``: per-source outputs with ``out``, and the user's
    sink gets every source's annotated frames, each named after its source, in each source's order."""

    class Collect:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int, int]] = []
            self.closed = False

        def write(self, frame, dets) -> None:  # noqa: ANN001
            self.seen.append((frame.name, frame.index, len(dets)))

        def close(self) -> None:
            self.closed = True

    sink = Collect()
    out = tmp_path / "out"
    result = detector.run(d2go, {"left": videos[0], "right": videos[1]}, out=out, sinks=[sink], max_frames=3)
    assert isinstance(result, multi_run.MultiRunResult) and sink.closed
    assert [s.name for s in result.sources] == ["left", "right"] and result.frames == 6
    for name in ("left", "right"):
        mine = [(i, n) for s, i, n in sink.seen if s == name]
        assert [i for i, _ in mine] == [0, 1, 2], (name, sink.seen)
        records = lines(out / f"{name}.jsonl")
        assert [len(r["detections"]) for r in records] == [n for _, n in mine], "the sink saw the same detections"
        assert any(n > 0 for _, n in mine), "the demo clip's people are detected"
        assert [r["frame"] for r in records] == [0, 1, 2] and frames_in(out / f"{name}.mp4") == 3
    # with sinks and without out, nothing is written
    before = set(tmp_path.rglob("*"))
    detector.run(d2go, [str(videos[0]), str(videos[1])], sinks=[Collect()], max_frames=1)
    assert set(tmp_path.rglob("*")) == before
    with pytest.raises(TypeError, match="for one source"):
        detector.run(d2go, [videos[0], videos[1]], json=tmp_path / "x.jsonl")


def test_the_api_streams_several_sources_with_their_names(d2go: detector.Detector, videos: tuple[Path, ...]) -> None:
    counts: dict[str, int] = {}
    with detector.stream(d2go, {"left": str(videos[0]), "right": str(videos[1])}) as results:
        for name, frame, dets in results:
            assert isinstance(dets, detector.Detections) and frame.image.ndim == 3
            counts[name] = counts.get(name, 0) + 1
            if min(counts.get("left", 0), counts.get("right", 0)) >= 2:
                break
    assert set(counts) == {"left", "right"}
    with pytest.raises(TypeError, match="several sources"):
        detector.stream(d2go, [str(videos[0]), str(videos[1])], max_frames=3)
    # a list is named as the command line and run() name it (here the files' stems)
    with detector.stream(d2go, [videos[0], str(videos[1])]) as results:
        assert sorted(results.names) == ["a", "b"]
    for empty in ([], {}, ()):
        with pytest.raises(ValueError, match="no sources given"):
            detector.stream(d2go, empty)
        with pytest.raises(ValueError, match="no sources given"):
            detector.run(d2go, empty)
