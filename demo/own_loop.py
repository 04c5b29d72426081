"""Your own OpenCV loop: cv2.VideoCapture in, cv2.VideoWriter out, the package only detects and draws.

python demo/own_loop.py INPUT OUTPUT.mp4 [--model d2go]
"""

from __future__ import annotations

import argparse
import sys

import cv2

import detector


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--model", default="d2go")
    args = ap.parse_args()
    model = detector.load(args.model)
    boxes, labels = detector.BoxAnnotator(thickness=2), detector.LabelAnnotator(show_score=True)
    cap = cv2.VideoCapture(args.input)
    if not cap.isOpened():
        print(f"error: cannot open {args.input}", file=sys.stderr)
        return 2
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out = cv2.VideoWriter(args.output, cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            dets = model(frame)
            out.write(detector.annotate(frame, dets, [boxes, labels]))
    finally:
        cap.release()
        out.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
