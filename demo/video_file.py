"""Annotate a video file using only the public API.

python demo/video_file.py INPUT OUTPUT.mp4 [--model d2go|NAME|FILE.pt] [--weights PATH|random]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import detector


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output", type=Path)
    ap.add_argument("--model", default="d2go")
    ap.add_argument("--weights")
    args = ap.parse_args()
    try:
        model = detector.load(args.model, weights=args.weights)
        with detector.open_source(args.input) as source:
            info = source.info
            with detector.VideoFileSink(args.output, info.fps or 30.0, (info.width, info.height)) as sink:
                for frame in source:
                    dets = model(frame.image)
                    sink.write(detector.annotate(frame.image, dets, copy=False))
                    print(f"frame {frame.index}: {len(dets)} objects, {dets.names[:5]}")
    except detector.DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
