"""End to end on a live-paced video: ``detector run`` on an MJPEG-over-HTTP camera.

A camera delivers frames at its own pace whether the model keeps up or not; a video file is read as
fast as the model goes. This serves the real vtest.avi frames (768x576 JPEGs, looped) at ``--fps``
on 127.0.0.1, as an IP camera serves them, and runs ``detector run http://127.0.0.1:PORT/video.mjpg
<configuration> --max-frames N --out <tmp>/live.mp4 --stats`` for each configuration: the run's
own closing line gives its frames/s (frames detected, drawn and written as H.264 + JSON lines, per
second of the run; a live source keeps only the newest frame, so frames/s above the model's rate is
impossible and below it is the pipeline's loss) and its stats table the inference p50.

    .venv/bin/python benchmarks/live_run.py
    .venv/bin/python benchmarks/live_run.py --fps 30 --frames 300 \\
        --configs "--fast --weights random" "--model retinanet_resnet50_fpn --weights random --min-size 320"
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, VIDEO, machine

sys.path.insert(0, str(ROOT))
from tests.stream_server import MjpegServer, jpeg_frames  # noqa: E402

DEFAULT_CONFIGS = [
    "--model fasterrcnn_resnet50_fpn --weights random --engine openvino --precision int8 --min-size 320 --max-size 427",
    "--fast --weights random",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fps", type=float, default=30.0, help="the camera's frame rate (default 30)")
    ap.add_argument("--frames", type=int, default=300, help="frames each run detects (--max-frames)")
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help="detector run arguments, one string each")
    args = ap.parse_args()
    print(f"# {machine()}")
    frames = jpeg_frames(VIDEO, n=800, size=None)
    print(f"# camera: {len(frames)} frames of {VIDEO.name} (768x576 JPEG), looped, served at {args.fps:g} frames/s")
    with MjpegServer(frames, fps=args.fps) as camera, tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            command = [sys.executable, "-m", "detector", "-q", "run", camera.url, *shlex.split(config),
                       "--max-frames", str(args.frames), "--out", str(Path(tmp) / "live.mp4"), "--stats"]  # fmt: skip
            res = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            closing = re.search(r"^(\d+) frames, (\d+) detections, ([\d.]+) frames/s", res.stdout, re.M)
            print(f"\n## detector run <camera> {config} --max-frames {args.frames} --stats  (rc {res.returncode})")
            if closing is None:
                print(res.stdout[-2000:] + res.stderr[-2000:])
                continue
            print(closing.group(0))
            table = re.search(r"^stage .*?^latency .*?$", res.stdout, re.M | re.S)
            print(table.group(0) if table else res.stdout[-1500:])


if __name__ == "__main__":
    main()
