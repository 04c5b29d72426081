"""stream() for embedding: take 50 results and stop; no thread is left running afterwards.

python demo/first_50_frames.py [VIDEO] [--model d2go]
"""

from __future__ import annotations

import argparse
import sys
import threading

import detector


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("video", nargs="?", default=str(detector.DEMO_CLIP))
    ap.add_argument("--model", default="d2go")
    args = ap.parse_args()
    model = detector.load(args.model)
    with detector.stream(model, args.video, max_frames=50) as results:
        total = sum(len(dets) for _, dets in results)
    print(f"50 frames, {total} detections; threads left: {[t.name for t in threading.enumerate()][1:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
