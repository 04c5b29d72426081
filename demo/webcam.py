"""Live detection from a webcam (camera 0 by default) in a window or the browser, public API only.

    python demo/webcam.py [--camera 0] [--serve 8080 | --window] [--model NAME_OR_TORCHSCRIPT] [--weights PATH] [--fast]

``--fast`` uses the fastest correct CPU preset, ``configs/fast_cpu.yaml``
(RetinaNet on OpenVINO at 320 px; exported on first use).

The camera is read by a capture thread that keeps only the newest frame, so
the view never lags behind however slow the model is. Ctrl-C (or q in the
window) stops it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detector import Detector, load_config, open_source
from detector.run import run

FAST_PRESET = Path(__file__).resolve().parents[1] / "configs" / "fast_cpu.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camera", default="0", help="camera index or a stream URL")
    ap.add_argument("--serve", default=None, help="[HOST:]PORT for the browser view (default 8080 unless --window)")
    ap.add_argument("--window", action="store_true", help="show a desktop window (needs GUI OpenCV)")
    ap.add_argument("--model", help="default fasterrcnn_resnet50_fpn (or the preset's with --fast)")
    ap.add_argument("--weights")
    ap.add_argument("--fast", action="store_true", help="fastest correct CPU preset (configs/fast_cpu.yaml)")
    args = ap.parse_args()

    preset = FAST_PRESET if args.fast else None
    detector = Detector.from_config(load_config(preset, {"model": args.model, "weights": args.weights}))
    serve = args.serve or (None if args.window else "8080")
    try:
        run(detector, open_source(args.camera), serve=serve, show=args.window, hud=True)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
