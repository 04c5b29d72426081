"""The pipeline's own ceiling: ``run()`` end to end with an instant model (a module that
returns two fixed boxes without looking at the frame), so every millisecond measured is
ours -- decode, preprocess, post-process, draw, encode, JSON -- never the model's.

Real video (../shared/data/video/vtest.avi, 768x576, 795 frames) on CPU. Rows: mp4 +
JSONL (the CLI's default: H.264; and mp4v), avi (MJPG) + JSONL, JSONL only, no output; and
a plain one-thread OpenCV loop (read, draw the same two boxes, write mp4v) for comparison.

    .venv/bin/python benchmarks/ceiling.py [--frames 795] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
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
    args = ap.parse_args()
    detector = Detector(Instant(), name="instant", device="cpu")
    float_detector = Detector(FloatInstant(), name="instant-float", device="cpu")
    rows: dict[str, list[float]] = {}
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
                r = run(model, VIDEO, max_frames=args.frames, progress=False, **kwargs)
                rows.setdefault(name, []).append(r.frames / r.seconds)
                if name == "run(): mp4 (H.264) + JSONL":
                    last_stats = r.stats
            rows.setdefault("plain OpenCV loop: mp4v", []).append(plain_loop(args.frames, d / "p.mp4"))
    print(f"# pipeline ceiling: instant model, {args.frames} frames of vtest.avi (768x576), {machine()}")
    print(f"median of {args.rounds} rounds, interleaved\n")
    print("| what | frames/s |")
    print("|---|---:|")
    for name, values in rows.items():
        print(f"| {name} | {median(values):.0f} |")
    if args.stages and last_stats is not None:
        print("\n" + last_stats.table())


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
