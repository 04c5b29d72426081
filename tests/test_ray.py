"""``detector run FOLDER --ray``: a local Ray (2 CPUs, started once for the module) gives the outputs of
a single-process run for folders of images and of videos, also when a worker process is killed mid-run;
without Ray, ``--ray`` says how to install it in one line."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from detector.cli import main

from .conftest import read_video
from .test_outputs import tree_digest
from .test_run_distributed import image_folder, jsonl, make_clips

MODEL = ["-q", "--model", "d2go", "--score", "0.3"]  # real detections; deterministic on one thread
NAMES = ["a.jsonl", "a.mp4", "b.jsonl", "b.mp4", "c.jsonl", "c.mp4"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module; ``detector run --ray`` uses the one this process started."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's folder, with the single-process reference runs made there on one thread (as
    each Ray worker of a 2-CPU Ray runs): ``imgs`` (6 images and an undecodable one) -> ``one_imgs``,
    ``clips`` (3 videos of 10 frames) -> ``one_clips``."""
    folder = tmp_path_factory.mktemp("ray")
    image_folder(folder / "imgs", 6)
    (folder / "imgs" / "000000015000.jpg").write_bytes(b"not an image")  # third of seven by name
    make_clips(folder / "clips", frames=10)
    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)
    try:
        assert main(["run", "imgs", *MODEL, "--out", "one_imgs"]) == 0
        assert main(["run", "clips", *MODEL, "--out", "one_clips"]) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    yield folder


@pytest.fixture
def in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(work)
    return work


def same_videos(a: Path, b: Path) -> None:
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir()) == NAMES
    for stem in "abc":
        assert jsonl(b / f"{stem}.jsonl") == jsonl(a / f"{stem}.jsonl")
        ours, theirs = read_video(b / f"{stem}.mp4"), read_video(a / f"{stem}.mp4")
        assert len(ours) == len(theirs) == 10
        assert all(np.array_equal(x, y) for x, y in zip(ours, theirs, strict=True))


def _ray_workers(kind: str) -> list[int]:
    """The pids of this machine's processes whose title names ``kind`` (Ray titles its workers ``ray::...``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if kind in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Killer(threading.Thread):
    """Kills (SIGKILL) the first pid ``find()`` returns while the run is on, once; ``killed``: its pid and title."""

    def __init__(self, find: Callable[[], int | None]) -> None:
        super().__init__()
        self.find, self.finished = find, threading.Event()
        self.killed: list[tuple[int, str]] = []

    def run(self) -> None:
        while not self.finished.is_set():
            pid = self.find()
            if pid is not None:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                os.kill(pid, signal.SIGKILL)
                self.killed.append((pid, title))
                return
            time.sleep(0.005)

    def __enter__(self) -> Killer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished.set()
        self.join()


def test_image_folder_equals_one_process_also_with_a_worker_killed(
    local_ray: None, in_work: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A Ray Data actor is killed once the first annotated image is written: Ray restarts it and redoes its
    batch; the outputs are those of one process all the same."""
    inputs = tree_digest(in_work / "imgs")
    out = in_work / "ray_imgs"

    def first_worker() -> int | None:
        pids = _ray_workers("MapBatches(ImageWorker)")
        return pids[0] if pids and out.is_dir() and any(out.iterdir()) else None

    with caplog.at_level(logging.WARNING, logger="detector"), Killer(first_worker) as killer:
        assert main(["run", "imgs", *MODEL, "--ray", "--out", "ray_imgs"]) == 0
    assert len(killer.killed) == 1 and "ray::" in killer.killed[0][1], killer.killed  # a worker, killed mid-run
    stdout = capsys.readouterr().out
    assert "6 frames, " in stdout and "annotated: ray_imgs\n" in stdout and "detections: ray_imgs.jsonl" in stdout
    assert [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()] == [
        f"skipping {in_work / 'imgs' / '000000015000.jpg'}: not a decodable image"
    ]
    lines = jsonl(in_work / "ray_imgs.jsonl")
    assert [r["frame"] for r in lines] == [0, 1, 3, 4, 5, 6]  # the undecodable third is skipped, as in one process
    assert lines == jsonl(in_work / "one_imgs.jsonl")
    assert tree_digest(out) == tree_digest(in_work / "one_imgs")  # annotated, byte for byte
    assert len(tree_digest(out)) == 6
    assert tree_digest(in_work / "imgs") == inputs
    assert not list(in_work.rglob("*.partial-*"))


def test_video_folder_equals_one_process_also_with_a_worker_killed(
    local_ray: None, in_work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pid in the first temporary video file is the worker writing it: killed there, Ray restarts it,
    the video is run again, and the dead worker's temporary files are removed."""
    out = in_work / "ray_clips"

    def first_writer() -> int | None:
        for partial in out.glob("*.partial-*.mp4") if out.is_dir() else ():
            m = re.search(r"\.partial-(\d+)\.", partial.name)
            if m is not None:
                return int(m[1])
        return None

    with Killer(first_writer) as killer:
        assert main(["run", "clips", *MODEL, "--ray", "--workers", "2", "--out", "ray_clips"]) == 0
    assert len(killer.killed) == 1 and "ray::VideoWorker" in killer.killed[0][1], killer.killed
    stdout = capsys.readouterr().out  # Ray adds its own lines about the killed worker
    assert any(line.startswith("30 frames, ") and line.endswith("(3 videos, 2 processes)") for line in
               stdout.splitlines()), stdout  # fmt: skip
    same_videos(in_work / "one_clips", out)
    assert not list(in_work.rglob("*.partial-*"))


def test_errors_are_one_line(local_ray: None, in_work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*args: str) -> str:
        assert main(["run", *args, *MODEL]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: "), err
        return err

    assert "--ray runs the images or videos of a folder or glob" in error("clips/a.mp4", "--ray")
    assert error("no_such_folder", "--ray") == "error: input no_such_folder not found; check the path"
    assert "--workers is for --ray runs" in error("clips", "--workers", "2")
    assert "--workers must be at least 1" in error("clips", "--ray", "--workers", "0")
    blocked = in_work / "blocked"
    (blocked / "000000010764.jpg").mkdir(parents=True)  # a folder where the second image goes
    line = error("imgs", "--ray", "--workers", "1", "--out", "blocked")
    target = blocked.resolve() / "000000010764.jpg"
    assert line == f"error: cannot write {target} (Is a directory); choose a writable --out path", line
    assert not list(in_work.rglob("*.partial-*"))


def test_the_driver_and_decode_tasks_load_no_torch() -> None:
    """A --ray driver plans and gathers, its decode tasks read images: neither imports torch (3-4 s
    each on a 2-core machine, before ray.init and in every task's process); only the model-holding
    workers do."""
    code = ("import sys; import detector.cli, detector.ray_run, detector.folder_run; "
            "from detector.stats import Stats; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_without_ray_the_fix_is_named_in_one_line(tmp_path: Path) -> None:
    """Ray's import fails (``sys.modules["ray"] = None``): exit 2, one line, nothing written."""
    image_folder(tmp_path / "imgs", 1)
    code = "import sys; sys.modules['ray'] = None; from detector.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "-q", "run", "imgs", "--ray", "--model", "d2go"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: --ray needs Ray, an optional extra: pip install 'detector-rt[ray]'\n"
    assert done.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
