"""CPU latency of the four registry models at several input sizes, and what
bf16 autocast and channels_last change.

Random-init weights (compute does not depend on the values, except the number
of boxes surviving the score threshold, which is set to 0.05 as in torchvision).
One real 768x576 frame; ``min_size`` sets the shorter side the model resizes to.

    .venv/bin/python benchmarks/latency.py [--sizes 320 480 800] [--iters 3]
"""

from __future__ import annotations

import argparse

import torch
from common import machine, median, p95, real_frame, time_ms

from detector import Detector, load_config
from detector.models import MODELS

VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="*", type=int, default=[320, 480, 800])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    frame = real_frame(0)
    device = torch.device("cpu")
    print(f"# CPU latency, {frame.shape[1]}x{frame.shape[0]} frame, {machine()}")
    print(f"median ms per frame (p95), {args.iters} timed runs after 1 warm-up")
    print("| model | min_size | " + " | ".join(args.variants) + " |")
    print("|---|---:|" + "---:|" * len(args.variants))
    for name in args.models:
        for size in args.sizes:
            cells = []
            for variant in args.variants:
                torch.manual_seed(0)
                cfg = load_config(None, {"model": name, "weights": "random", "device": "cpu", "min_size": size,
                                         "max_size": max(size, round(size * 4 / 3)), "score_threshold": 0.05,
                                         **VARIANTS[variant]})  # fmt: skip
                det = Detector.from_config(cfg)
                times = time_ms(lambda det=det: det(frame), device, warmup=1, iters=args.iters)
                cells.append(f"{median(times):.0f} ({p95(times):.0f})")
            print(f"| {name} | {size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
