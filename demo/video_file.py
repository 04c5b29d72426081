"""Annotate a video file using only the public API.

python demo/video_file.py INPUT OUTPUT.mp4 [--model NAME_OR_TORCHSCRIPT] [--weights PATH|random]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detector import Detector, annotate, load_config, open_source
from detector.io import VideoFileSink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output", type=Path)
    ap.add_argument("--model", default="fasterrcnn_resnet50_fpn")
    ap.add_argument("--weights")
    args = ap.parse_args()

    detector = Detector.from_config(load_config(None, {"model": args.model, "weights": args.weights}))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open_source(args.input) as source:
        info = source.info
        with VideoFileSink(args.output, info.fps or 30.0, (info.width, info.height)) as sink:
            for frame in source:
                detections = detector(frame.image)
                sink.write(annotate(frame.image, detections, copy=False))
                print(f"frame {frame.index}: {len(detections)} objects, {detections.names[:5]}")


if __name__ == "__main__":
    main()
