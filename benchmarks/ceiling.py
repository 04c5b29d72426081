"""The pipeline's own ceiling: ``run()`` end to end with an instant model (a module that
returns two fixed boxes without looking at the frame), so every millisecond measured is
ours -- decode, preprocess, post-process, draw, encode, JSON -- never the model's.

Real video (../shared/data/video/vtest.avi, 768x576, 795 frames) on CPU. Rows: mp4 +
JSONL (the CLI's default: H.264; and mp4v), avi (MJPG) + JSONL, JSONL only, no output; and
a plain one-thread OpenCV loop (read, draw the same two boxes, write mp4v) for comparison. CPU ms/frame counts
every thread of the process (``time.process_time()``). ``--two-processes`` also runs the plain
loop alone and as two processes at once, to show whether this machine's cores scale.

    .venv/bin/python benchmarks/ceiling.py [--frames 795] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import VIDEO, machine, median
from common import plain_loop as common_plain_loop

from detector import Detector
from detector.io.sinks import JsonlSink
from detector.runner import run


class Instant(torch.nn.Module):
    """Two fixed person boxes per image, whatever the image: a model that costs nothing.

    It never reads pixels, so it takes the uint8 frames as they come (``accepts_uint8``);
    the ``FloatInstant`` row shows what converting to float 0..1 adds, as it is done for
    every model that does not declare ``accepts_uint8`` (torchvision's, TorchScript files).
    """

    accepts_uint8 = True

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes = torch.tensor([[100.0, 100.0, 200.0, 300.0], [300.0, 120.0, 380.0, 330.0]])
        return [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])} for _ in images]


class FloatInstant(Instant):
    accepts_uint8 = False


def plain_loop(n: int, out: Path) -> float:
    """What a hand-written OpenCV script does with the same model: read, draw, write mp4v, in turn."""
    boxes = [((100, 100, 200, 300), "person 0.90"), ((300, 120, 380, 330), "person 0.90")]
    return common_plain_loop(n, out, lambda frame: boxes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=795)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", action="store_true", help="also print the stage table of the last H.264 + JSONL run")
    ap.add_argument("--two-processes", action="store_true",
                    help="also time the plain loop alone and as two processes at once")  # fmt: skip
    args = ap.parse_args()
    detector = Detector(Instant(), name="instant", device="cpu")
    float_detector = Detector(FloatInstant(), name="instant-float", device="cpu")
    rows: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # CPU ms per frame, all threads of this process
    last_stats = None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cases = {
            "run(): mp4 (H.264) + JSONL": {"out": d / "o.mp4", "json": d / "o.jsonl", "codec": "h264"},
            "run(): mp4 (mp4v) + JSONL": {"out": d / "v.mp4", "json": d / "v.jsonl", "codec": "mp4v"},
            "run(): mp4 (H.264) + JSONL, float-input model": {
                "out": d / "f.mp4",
                "json": d / "f.jsonl",
                "codec": "h264",
            },  # fmt: skip
            "run(): avi + JSONL": {"out": d / "o.avi", "json": d / "o2.jsonl"},
            "run(): JSONL only": {"sinks": [_Jsonl(d / "o3.jsonl")]},
            "run(): no output": {"sinks": [_Discard()]},
        }
        for _ in range(args.rounds):  # interleaved, so drift hits every row alike
            for name, kwargs in cases.items():
                model = float_detector if "float" in name else detector
                c0 = time.process_time()
                r = run(model, VIDEO, max_frames=args.frames, progress=False, **kwargs)
                cpu.setdefault(name, []).append((time.process_time() - c0) / r.frames * 1000)
                rows.setdefault(name, []).append(r.frames / r.seconds)
                if name == "run(): mp4 (H.264) + JSONL":
                    last_stats = r.stats
            c0, t0 = time.process_time(), time.perf_counter()
            fps = plain_loop(args.frames, d / "p.mp4")
            done = fps * (time.perf_counter() - t0)  # frames the loop wrote (the video may be shorter)
            rows.setdefault("plain OpenCV loop: mp4v", []).append(fps)
            cpu.setdefault("plain OpenCV loop: mp4v", []).append((time.process_time() - c0) / done * 1000)
    print(f"# pipeline ceiling: instant model, {args.frames} frames of vtest.avi (768x576), {machine()}")
    print(f"median of {args.rounds} rounds, interleaved\n")
    print("| what | frames/s | CPU ms/frame |")
    print("|---|---:|---:|")
    for name, values in rows.items():
        print(f"| {name} | {median(values):.0f} | {median(cpu[name]):.1f} |")
    if args.two_processes:
        alone = _plain_loops(1, args.frames)
        together = _plain_loops(2, args.frames)
        print(f"\nplain loop in its own process: {alone[0]:.0f} frames/s; two such processes at once: "
              f"{' and '.join(f'{v:.0f}' for v in together)} frames/s")  # fmt: skip
    if args.stages and last_stats is not None:
        print("\n" + last_stats.table())


def _plain_loops(n: int, frames: int) -> list[float]:
    """frames/s of ``n`` plain loops, each in its own Python process, started together."""
    code = (f"import sys, tempfile, pathlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from ceiling import plain_loop; "
            f"print(plain_loop({frames}, pathlib.Path(tempfile.mkdtemp()) / 'p.mp4'))")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [float(p.communicate()[0]) for p in procs]


class _Jsonl:
    """A fresh JSON Lines sink per run (``json=`` alone would also write the default video)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> JsonlSink:
        self.sink = JsonlSink(self.path)
        return self.sink.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.sink.__exit__(*exc)


class _Discard:
    def write(self, frame: object, detections: object) -> None:
        pass


if __name__ == "__main__":
    main()
