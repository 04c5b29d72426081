"""Live detection from a webcam (camera 0 by default) in the browser or a window, public API only.

    python demo/webcam.py [--camera 0] [--serve 8080 | --window] [--model d2go | --config PRESET | --fast]
                          [--device cpu]

The default model is the small COCO-trained D2Go model shipped with the
package, which keeps up with a webcam on a laptop CPU; pass --model
fasterrcnn_resnet50_fpn (or a preset with --config) for the large models,
or --fast for the fastest correct CPU setting of a ResNet-50-FPN model
(the ``fast_cpu`` preset: RetinaNet on OpenVINO at 320 px, exported on first use).
The camera is read by a capture thread that keeps only the newest frame, so
the view never lags behind however slow the model is. Ctrl-C (or q in the
window) stops it.
"""

from __future__ import annotations

import argparse
import os
import sys

# before OpenCV and torch load: their native console warnings would bury our one-line errors
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import detector  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--camera", default="0", help="camera index or a stream URL")
    ap.add_argument("--serve", default=None, help="[HOST:]PORT for the browser view (default 8080 unless --window)")
    ap.add_argument("--window", action="store_true", help="show a desktop window (needs GUI OpenCV)")
    ap.add_argument("--model", default=None, help="registry name, d2go (default) or a TorchScript file")
    ap.add_argument("--config", default=None, help="a preset name or YAML file (instead of --model)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fast", action="store_true", help="the fast_cpu preset (RetinaNet, OpenVINO, 320 px)")
    args = ap.parse_args()
    try:
        source = detector.open_source(args.camera)  # the camera first: no model load for a missing one
        name = "fast_cpu" if args.fast else args.config or args.model or "d2go"
        model = detector.load(name, weights=args.weights, device=args.device)
        serve = args.serve or (None if args.window else "8080")
        detector.run(model, source, serve=serve, show=args.window, hud=True)
    except detector.DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
