"""RenderPool (``--render-procs``): frames drawn in worker processes, written in order, equal to
drawing in the writer thread; errors, a killed worker and the shared memory it leaves."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector import Detections, Detector, annotate
from detector.cli import main
from detector.errors import SinkError
from detector.io.renderpool import RenderPool
from detector.io.types import Frame

from .conftest import VIDEO, need, read_video

MODEL = ["--model", "d2go", "--score", "0.3"]


class Keep:
    """A sink that keeps a copy of each image it is given (the pool reuses its slots)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.frames: list[tuple[int, np.ndarray]] = []
        self.fail_at = fail_at

    def write(self, frame: Frame, detections: Detections) -> None:
        if frame.index == self.fail_at:
            raise SinkError("disk full")
        self.frames.append((frame.index, frame.image.copy()))


def random_detections(rng: np.random.Generator, h: int, w: int) -> Detections:
    n = int(rng.integers(0, 30))
    xy = rng.uniform(0, [w - 20, h - 20], (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1).astype(np.float32)
    return Detections(boxes, rng.uniform(0.3, 1, n).astype(np.float32), rng.integers(1, 91, n))


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    frames = read_video(need(VIDEO))[:12]
    return [cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in frames]


def test_frames_are_drawn_as_in_the_writer_thread_and_written_in_order(clip: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    # a larger frame in the middle (a folder of mixed sizes): drawn in the caller's thread, in its turn
    images = [*clip[:5], cv2.resize(clip[5], (480, 360)), *clip[6:]]
    dets = [random_detections(rng, *im.shape[:2]) for im in images]
    originals = [im.copy() for im in images]
    keep = Keep()
    with RenderPool(keep, procs=2, slots=3) as pool:
        for i, (im, d) in enumerate(zip(images, dets, strict=True)):
            pool.write(Frame(i, i / 10, im, "clip"), d)
    assert [i for i, _ in keep.frames] == list(range(len(images)))
    for (i, got), im, d in zip(keep.frames, originals, dets, strict=True):
        assert np.array_equal(got, annotate(im, d)), f"frame {i} differs from drawing in process"
    assert all(np.array_equal(a, b) for a, b in zip(images, originals, strict=True)), "a caller's frame changed"
    assert not pool.path.exists(), "shared memory file left behind"


def test_hud_is_drawn_by_the_workers(clip: list[np.ndarray]) -> None:
    keep = Keep()
    with RenderPool(keep, procs=1, hud="model-x") as pool:
        for i, im in enumerate(clip[:3]):
            pool.write(Frame(i, 0.0, im, "clip", time.perf_counter()), Detections.empty())
    for (_, got), im in zip(keep.frames, clip[:3], strict=True):
        band = got[:10, :100].astype(int)
        assert (band < im[:10, :100].astype(int)).mean() > 0.5  # the darkened status band
        assert np.array_equal(got[100:], im[100:])  # nothing drawn elsewhere without detections


def test_a_sink_error_is_raised_and_the_pool_stops(clip: list[np.ndarray]) -> None:
    keep = Keep(fail_at=3)
    pool = RenderPool(keep, procs=2)
    with pytest.raises(SinkError, match="disk full"):
        for i in range(40):
            pool.write(Frame(i, 0.0, clip[i % len(clip)], "clip"), Detections.empty())
        pool.close()
    pool.close()
    assert [i for i, _ in keep.frames] == [0, 1, 2]
    assert not any(w.is_alive() for w in pool._workers) and not pool.path.exists()


def test_a_killed_worker_ends_the_run_with_one_line(clip: list[np.ndarray]) -> None:
    keep = Keep()
    pool = RenderPool(keep, procs=1)
    pool.write(Frame(0, 0.0, clip[0], "clip"), Detections.empty())
    deadline = time.monotonic() + 60
    while not keep.frames and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = pool._workers[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(SinkError, match=r"a render process died \(exit code -9\)"):
        for i in range(1, 200):
            pool.write(Frame(i, 0.0, clip[i % len(clip)], "clip"), Detections.empty())
        pool.close()
    assert time.monotonic() - start < 30
    pool.close(report=False)
    assert not pool.path.exists()


def test_run_with_render_procs_writes_the_same_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = need(VIDEO)
    for n in (0, 2):
        args = ["-q", "run", str(video), "--max-frames", "12", "--out", str(tmp_path / f"o{n}.mp4"), *MODEL]
        assert main([*args, "--render-procs", str(n)]) == 0
    assert (tmp_path / "o0.jsonl").read_bytes() == (tmp_path / "o2.jsonl").read_bytes()
    a, b = read_video(tmp_path / "o0.mp4"), read_video(tmp_path / "o2.mp4")
    assert len(a) == len(b) == 12 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not list(tmp_path.glob("*.partial-*"))


def test_a_folder_of_videos_with_render_procs_writes_the_same_files(tmp_path: Path) -> None:
    from .test_run_distributed import make_clips

    make_clips(tmp_path / "clips", ("a.mp4", "b.avi"), frames=5)
    for n in (0, 1):
        args = ["-q", "run", str(tmp_path / "clips"), "--out", str(tmp_path / f"o{n}"), "--render-procs", str(n)]
        assert main([*args, *MODEL]) == 0
    for stem in ("a", "b"):
        assert (tmp_path / "o0" / f"{stem}.jsonl").read_bytes() == (tmp_path / "o1" / f"{stem}.jsonl").read_bytes()
        a, b = read_video(tmp_path / "o0" / f"{stem}.mp4"), read_video(tmp_path / "o1" / f"{stem}.mp4")
        assert len(a) == len(b) == 5 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_render_procs_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*args: str) -> str:
        assert main(["-q", "run", str(need(VIDEO)), "--out", str(tmp_path / "o.mp4"), *args, *MODEL]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: "), err
        return err

    assert "--render-procs must be at least 0" in error("--render-procs", "-1")
    assert "cannot feed --serve or --show" in error("--render-procs", "2", "--serve", "0")
    assert "--render-procs is for one input" in error("--render-procs", "2", "--ray")
    assert not list(tmp_path.iterdir())


def test_a_script_without_a_main_guard_works(tmp_path: Path) -> None:
    """Workers are spawned (not forked: the caller runs threads), and spawn would run an unguarded
    script's top level again in each of them (which would start more workers): the pool hides
    ``__main__`` from them. ``run`` takes its paths as str too."""
    script = tmp_path / "app.py"
    script.write_text(
        "import numpy as np\n"
        "from detector import Detections\n"
        "from detector.io import ImageSink\n"
        "from detector.io.renderpool import RenderPool\n"
        "from detector.io.types import Frame\n"
        f"sink = ImageSink({str(tmp_path / 'out')!r}, folder=True)\n"
        "with RenderPool(sink, procs=2) as pool:\n"
        "    for i in range(6):\n"
        "        pool.write(Frame(i, 0.0, np.zeros((32, 48, 3), np.uint8), f'{i}.png'), Detections.empty())\n"
        "print('done')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(6)]


def test_run_takes_str_paths(tmp_path: Path, torchscript_detector: Detector) -> None:
    from detector import run

    out = tmp_path / "o.mp4"
    result = run(torchscript_detector, str(need(VIDEO)), out=str(out), max_frames=3, progress=False, render_procs=1)
    assert result.out == out and result.json == out.with_suffix(".jsonl") and result.frames == 3


def test_an_unpicklable_frame_fails_in_write_and_nothing_hangs(clip: list[np.ndarray]) -> None:
    """What cannot reach a worker fails in the caller's ``write`` (not silently in a queue's feeder
    thread, which would leave the slot undrawn and ``close`` waiting for ever); the slot is returned."""

    class Local(Detections):  # a class defined in a function cannot be pickled
        pass

    keep = Keep()
    pool = RenderPool(keep, procs=1, slots=2)
    pool.write(Frame(0, 0.0, clip[0], "clip"), Detections.empty())
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        pool.write(Frame(1, 0.0, clip[1], "clip"), Local.empty())
    for i in (2, 3, 4):  # both slots still usable
        pool.write(Frame(i, 0.0, clip[i], "clip"), Detections.empty())
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 30 and [i for i, _ in keep.frames] == [0, 2, 3, 4]
    with pytest.raises(SinkError, match="closed"):
        pool.write(Frame(5, 0.0, clip[5], "clip"), Detections.empty())
    assert pool.path is not None and not pool.path.exists()
