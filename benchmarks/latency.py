"""Per-frame CPU latency through ``Detector``: the four registry models by input size and variant
(fp32, bf16 autocast, channels_last); with ``--direct``, against a hand-written torchvision call on
the same model, which is what ``Detector`` itself adds.

Random-init weights (compute does not depend on the values, except the number of boxes surviving
the score threshold, 0.05 as in torchvision's evaluation). One real 768x576 frame of vtest.avi;
``min_size`` sets the shorter side the model resizes to.

``--direct``: "direct" is what a user writes by hand (BGR->RGB, HWC->CHW, /255, ``model([x])`` under
``inference_mode``) on ``Detector``'s own fp32 model, at the default display threshold (0.5); the
two calls alternate to cancel drift, and ``Detector.preprocess`` alone is timed at the end.

    .venv/bin/python benchmarks/latency.py [--sizes 320 480 800] [--iters 3] [--models ...] [--variants ...]
    .venv/bin/python benchmarks/latency.py --direct --sizes 480 --iters 10      # Detector's overhead
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import machine, median, p95, real_frame, sized, time_ms

from detector import Detector, load_config
from detector.models import MODELS

VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
}


def build(name: str, size: int, **overrides: object) -> Detector:
    torch.manual_seed(0)
    cfg = load_config(None, {"model": name, "weights": "random", "device": "cpu", **sized(size), **overrides})
    return Detector.from_config(cfg)


def variants_table(args: argparse.Namespace, frame: np.ndarray) -> None:
    print(f"median ms per frame (p95), {args.iters} timed runs after 1 warm-up")
    print("| model | min_size | " + " | ".join(args.variants) + " |")
    print("|---|---:|" + "---:|" * len(args.variants))
    for name in args.models:
        for size in args.sizes:
            cells = []
            for variant in args.variants:
                det = build(name, size, score_threshold=0.05, **VARIANTS[variant])
                times = time_ms(lambda det=det: det(frame), torch.device("cpu"), warmup=1, iters=args.iters)
                cells.append(f"{median(times):.0f} ({p95(times):.0f})")
            print(f"| {name} | {size} | " + " | ".join(cells) + " |", flush=True)


def direct_table(args: argparse.Namespace, frame: np.ndarray) -> None:
    print(f"median of {args.iters} alternating runs after 2 warm-ups each, fp32")
    print("| model | min_size | direct call, ms (median) | Detector, ms (median) | overhead |")
    print("|---|---:|---:|---:|---:|")
    det = None
    for name in args.models:
        for size in args.sizes:
            det = build(name, size)

            def direct(model: torch.nn.Module = det.model) -> object:
                x = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0
                with torch.inference_mode():
                    out = model([x])[0]
                return {k: v.numpy() for k, v in out.items()}

            def wrapped(det: Detector = det) -> object:
                return det(frame)

            for fn in (direct, wrapped, direct, wrapped):  # warm-up
                fn()
            t_direct: list[float] = []
            t_det: list[float] = []
            for _ in range(args.iters):
                for fn, sink in ((direct, t_direct), (wrapped, t_det)):
                    start = time.perf_counter()
                    fn()
                    sink.append((time.perf_counter() - start) * 1000)
            md, mw = median(t_direct), median(t_det)
            print(f"| {name} | {size} | {md:.1f} | {mw:.1f} | {100 * (mw - md) / md:+.2f}% |", flush=True)
    if det is not None:
        det.preprocess([frame])
        start = time.perf_counter()
        for _ in range(50):
            det.preprocess([frame])
        print(f"\nDetector.preprocess alone: {(time.perf_counter() - start) / 50 * 1000:.2f} ms per frame")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[320, 480, 800], help="min_size values")
    ap.add_argument("--iters", type=int, default=3, help="timed runs per cell")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--direct", action="store_true",
                    help="Detector (fp32) against a hand-written torchvision call instead of the variants")  # fmt: skip
    args = ap.parse_args()
    frame = real_frame(0)
    what = "Detector overhead over a direct call" if args.direct else "CPU latency"
    print(f"# {what}, {frame.shape[1]}x{frame.shape[0]} frame, {machine()}")
    (direct_table if args.direct else variants_table)(args, frame)


if __name__ == "__main__":
    main()
