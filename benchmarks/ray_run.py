"""``detector run FOLDER --ray`` against one process and against fixed sharding (not a test).

Inputs, made in a temporary folder from ../shared: 8 videos of unequal length cut from vtest.avi
(``--lengths``, halved to 384x288) and a folder of ``--images`` images (the coco-mini images, halved,
repeated under new names). Each configuration runs once as the user runs it (``python -m detector -q
run ...``, the shipped ``d2go`` model), timed from start to exit, so each figure includes Python's and
the model's start-up:

- one process (all cores in one torch);
- ``--ray`` on a local Ray started by the run (one worker per core, one thread each);
- videos only: fixed sharding ``[rank::world]`` across the same number of workers -- the ``torchrun``
  path of ``detector run`` (one thread per process, as torchrun sets);
- the start-up cost: the same three on a folder of one image, and ``ray.init`` + ``ray.shutdown`` alone.

``--model-args`` replaces the model flags (default: the shipped ``d2go``). Prints a Markdown table (frames/s
over the whole command, seconds) and the ratios; ``--out FILE`` also writes it there. Usage:
``.venv/bin/python benchmarks/ray_run.py [--workers 2] [--model-args "..."] [--out results/x.txt]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from common import SHARED, VIDEO, machine

COCO = SHARED / "data" / "coco-mini" / "val2017"
LENGTHS = (96, 8, 48, 8, 24, 8, 16, 8)
"""Frames per video, by name order: the longest first, so ``[rank::world]`` gives rank 0 most of the work."""
MODEL = ["--model", "d2go", "--score", "0.3"]
"""The model flags of every command (``--model-args`` replaces them): the shipped model, cheap per frame, so
decoding, drawing and encoding weigh as much as the model. A heavier one (``--model-args "--model
fasterrcnn_resnet50_fpn --weights random --min-size 320"``) shows the scheduling where the model dominates."""


def make_videos(folder: Path, lengths: tuple[int, ...]) -> int:
    folder.mkdir(parents=True)
    cap = cv2.VideoCapture(str(VIDEO))
    try:
        for i, n in enumerate(lengths):
            writer = cv2.VideoWriter(str(folder / f"v{i}.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (384, 288))
            for _ in range(n):
                ok, frame = cap.read()
                if not ok:  # past the end of the clip: start again
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                writer.write(cv2.resize(frame, (384, 288), interpolation=cv2.INTER_AREA))
            writer.release()
    finally:
        cap.release()
    return sum(lengths)


def make_images(folder: Path, n: int) -> int:
    folder.mkdir(parents=True)
    sources = sorted(COCO.glob("*.jpg"))
    for i in range(n):
        image = cv2.imread(str(sources[i % len(sources)]))
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    return n


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


def detector(*args: str) -> list[str]:
    return [sys.executable, "-m", "detector", "-q", "run", *args, *MODEL]


def torchrun(workers: int, *args: str) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(workers)]
    return [*launch, "-m", "detector", "-q", "run", *args, *MODEL]


def ray_start_stop(cwd: Path) -> float:
    code = ("import logging, time, ray; t = time.perf_counter(); "
            "ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR); "
            "ray.shutdown(); print(time.perf_counter() - t)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Ray workers and torchrun processes")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="frames of each video")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--model-args", default=shlex.join(MODEL), help="the model flags of every command")
    parser.add_argument("--sharding-only", action="store_true",
                        help="only the videos: --ray against torchrun [rank::world]")  # fmt: skip
    args = parser.parse_args()
    MODEL[:] = shlex.split(args.model_args)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    w = str(args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default, said here so the run is the same
    rows: list[tuple[str, str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = make_videos(root / "videos", lengths)
        images = make_images(root / "images", args.images)
        make_images(root / "one", 1)
        ray_init = 0.0 if args.sharding_only else ray_start_stop(root)
        for what, cmd, n in (
            ("1 image", detector("one", "--out", "o1"), 1),
            ("1 image", detector("one", "--out", "o2", "--ray", "--workers", w), 1),
            (f"{len(lengths)} videos", detector("videos", "--out", "v1"), frames),
            (f"{len(lengths)} videos", detector("videos", "--out", "v2", "--ray", "--workers", w), frames),
            (f"{len(lengths)} videos", torchrun(args.workers, "videos", "--out", "v3"), frames),
            (f"{images} images", detector("images", "--out", "i1"), images),
            (f"{images} images", detector("images", "--out", "i2", "--ray", "--workers", w), images),
        ):
            how = "torchrun [rank::world]" if "torch.distributed.run" in cmd else (
                "--ray" if "--ray" in cmd else "one process")  # fmt: skip
            if args.sharding_only and (not what.endswith("videos") or how == "one process"):
                continue
            seconds = timed(cmd, root, env if how.startswith("torchrun") else None)
            rows.append((what, how, n, seconds))
            print(f"{what:12s} {how:24s} {seconds:7.1f} s", file=sys.stderr, flush=True)
    by = {(what.split()[-1], how): seconds for what, how, _, seconds in rows}
    lines = [
        f"machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f} (other sessions share it)",
        f"videos: {len(lengths)} of {','.join(map(str, lengths))} frames at 384x288; images: {images} at about "
        f"320x240; --workers {w}; model flags {shlex.join(MODEL)}; each figure one run of the whole command",
        "",
        "| input | how | frames | seconds | frames/s |",
        "|---|---|---:|---:|---:|",
        *(f"| {what} | {how} | {n} | {s:.1f} | {n / s:.2f} |" for what, how, n, s in rows),
        "",
    ]
    ray_vs_sharding = by[("videos", "torchrun [rank::world]")] / by[("videos", "--ray")]
    if args.sharding_only:
        lines.append(f"videos: --ray / torchrun [rank::world] = {ray_vs_sharding:.2f}x the speed")
    else:
        lines += [
            f"ray.init + ray.shutdown alone: {ray_init:.1f} s; start-up of --ray over one process on one image: "
            f"{by[('image', '--ray')] - by[('image', 'one process')]:+.1f} s",
            f"videos: --ray / one process = {by[('videos', 'one process')] / by[('videos', '--ray')]:.2f}x the speed; "
            f"--ray / torchrun [rank::world] = {ray_vs_sharding:.2f}x",
            f"images: --ray / one process = {by[('images', 'one process')] / by[('images', '--ray')]:.2f}x the speed",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n" + json.dumps(rows) + "\n")


if __name__ == "__main__":
    main()
