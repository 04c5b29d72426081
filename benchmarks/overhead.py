"""Detector overhead over a direct torchvision call, on CPU.

Both sides get the same real 768x576 BGR frame and the same random-init
model (no COCO weights on these machines; compute is the same either way).
"direct" is what a user writes by hand: BGR->RGB, HWC->CHW, /255, model([x])
under inference_mode. Runs alternate between the two to cancel drift.

    .venv/bin/python benchmarks/overhead.py [--iters 10] [--min-size 480 --max-size 640]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, median, real_frame

from detector import Detector, load_config
from detector.models import MODELS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--min-size", type=int, default=480)
    ap.add_argument("--max-size", type=int, default=640)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    frame = real_frame(0)
    print(f"# Detector overhead, {frame.shape[1]}x{frame.shape[0]} frame, min_size {args.min_size}, {machine()}")
    print("| model | direct call, ms (median) | Detector, ms (median) | overhead |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        cfg = load_config(None, {"model": name, "weights": "random", "device": "cpu",
                                 "min_size": args.min_size, "max_size": args.max_size})  # fmt: skip
        det = Detector.from_config(cfg)
        model = det.model

        def direct(model: torch.nn.Module = model) -> object:
            x = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0
            with torch.inference_mode():
                out = model([x])[0]
            return {k: v.numpy() for k, v in out.items()}

        def wrapped(det: Detector = det) -> object:
            return det(frame)

        for fn in (direct, wrapped, direct, wrapped):  # warm-up
            fn()
        t_direct, t_det = [], []
        for _ in range(args.iters):
            for fn, sink in ((direct, t_direct), (wrapped, t_det)):
                start = time.perf_counter()
                fn()
                sink.append((time.perf_counter() - start) * 1000)
        md, mw = median(t_direct), median(t_det)
        print(f"| {name} | {md:.1f} | {mw:.1f} | {100 * (mw - md) / md:+.2f}% |", flush=True)
    det.preprocess([frame])
    start = time.perf_counter()
    for _ in range(50):
        det.preprocess([frame])
    print(f"\nDetector.preprocess alone: {(time.perf_counter() - start) / 50 * 1000:.2f} ms per frame")


if __name__ == "__main__":
    main()
