"""End-to-end frames/s of ``run()`` by batch size, with a real model on a real video.

The per-frame path must not get slower with batching built in: run this in this
checkout and in an older one (``--batches 1`` runs on any version) and compare.
Default: the shipped int8 ``d2go`` TorchScript model (it takes one image per call,
so a batch runs one by one), 120 frames of vtest.avi, avi (MJPG) + JSONL.

    .venv/bin/python benchmarks/batching.py [--model d2go] [--batches 1 4] [--frames 120] [--rounds 2]
    .venv/bin/python benchmarks/batching.py --model retinanet_resnet50_fpn --weights random --min-size 320
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import VIDEO, machine, median

from detector import Detector, load_config
from detector.runner import run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="d2go")
    ap.add_argument("--weights")
    ap.add_argument("--min-size", type=int)
    ap.add_argument("--batches", nargs="*", type=int, default=[1])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    values = {"model": args.model, "device": "cpu", "weights": args.weights}
    if args.min_size:
        values.update(min_size=args.min_size, max_size=max(args.min_size, 1333 * args.min_size // 800))
    detector = Detector.from_config(load_config(None, values), progress=False)
    fps: dict[int, list[float]] = {b: [] for b in args.batches}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):  # interleaved
            for b in args.batches:
                extra = {"batch_size": b} if b != 1 else {}  # batch 1 also runs on versions without batching
                r = run(detector, VIDEO, out=Path(tmp) / f"o{i}-{b}.avi", json=Path(tmp) / f"o{i}-{b}.jsonl",
                        max_frames=args.frames, progress=False, **extra)  # fmt: skip
                fps[b].append(r.frames / r.seconds)
    print(f"# run() end to end, {detector.name}, {args.frames} frames of vtest.avi, avi + JSONL, {machine()}")
    for b, values_ in fps.items():
        print(f"batch {b}: median {median(values_):.2f} frames/s (rounds: {', '.join(f'{v:.2f}' for v in values_)})")


if __name__ == "__main__":
    main()
