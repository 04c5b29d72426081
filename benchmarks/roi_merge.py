"""Faster R-CNN exported with torchvision's RoI-level merge against the export's gather (not a test).

torchvision's traced ``MultiScaleRoIAlign`` puts each level's pooled boxes back in order with a
ScatterElements on an index expanded to every pooled value; ``detector export`` replaces that with one
gather (:func:`detector.engines.export.merge_levels`, the same values). This exports the same random
Faster R-CNN both ways and times them interleaved, on OpenVINO f32 and ONNX Runtime, one real 640x480
frame, at ``--size`` and ``--proposals``; outputs are checked equal. Per variant: warm-up until two
calls agree within 10%, then the median of ``--rounds`` interleaved rounds.

    .venv/bin/python benchmarks/roi_merge.py [--size 320] [--proposals 1000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from common import ROOT, VIDEO, machine

sys.path.insert(0, str(ROOT))
from detector import load_config  # noqa: E402
from detector.engines import export  # noqa: E402
from detector.models import build_model  # noqa: E402


def warm(call: Callable[[], object], tries: int = 20) -> int:
    last = float("inf")
    for i in range(tries):
        start = time.perf_counter()
        call()
        now = time.perf_counter() - start
        if abs(now - last) <= 0.1 * min(now, last):
            return i + 1
        last = now
    return tries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--proposals", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    import onnxruntime as ort
    import openvino as ov

    print(f"# RoI-level merge: torchvision's scatter vs the export's gather; {machine()}")
    print(f"# fasterrcnn_resnet50_fpn, random weights (seed 0), {args.size} px, {args.proposals} proposals; "
          f"OpenVINO {ov.get_version()}, ONNX Runtime {ort.__version__}")  # fmt: skip
    cfg = load_config(None, {"model": "fasterrcnn_resnet50_fpn", "weights": "random", "min_size": args.size,
                             "max_size": round(args.size * 4 / 3), "score_threshold": 0.05,
                             "rpn_post_nms_top_n": args.proposals})  # fmt: skip
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    frame = cv2.resize(cv2.VideoCapture(str(VIDEO)).read()[1], (640, 480), interpolation=cv2.INTER_AREA)
    image = np.ascontiguousarray(frame[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0
    core = ov.Core()
    calls: dict[str, Callable[[], list[np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for merge in ("scatter", "gather"):
            path = Path(tmp) / f"{merge}.onnx"
            if merge == "scatter":  # torchvision's own merge: the export without its rewrite
                rewrites, export._export_rewrites = export._export_rewrites, _nothing
                try:
                    export._export_onnx(model, path)
                finally:
                    export._export_rewrites = rewrites
            else:
                export._export_onnx(model, path)
            hints = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
            compiled = core.compile_model(core.read_model(str(path)), "CPU", hints)
            request = compiled.create_infer_request()
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            calls[f"openvino {merge}"] = lambda r=request: [np.array(v) for v in r.infer({0: image}).values()]
            calls[f"onnxruntime {merge}"] = lambda s=session: s.run(None, {"image": image})
        outputs = {k: call() for k, call in calls.items()}
        for engine in ("openvino", "onnxruntime"):
            same = all(np.array_equal(a, b) for a, b in zip(outputs[f"{engine} scatter"], outputs[f"{engine} gather"],
                                                               strict=True))  # fmt: skip
            print(f"# {engine}: outputs equal: {same} ({len(outputs[f'{engine} gather'][0])} boxes)")
        warmups = {k: warm(call) for k, call in calls.items()}
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.rounds):
            for k, call in calls.items():
                start = time.perf_counter()
                call()
                times[k].append((time.perf_counter() - start) * 1000)
    print(f"# warm-up calls {warmups}")
    print(f"\nms per frame, median of {args.rounds} interleaved rounds")
    print("| engine | torchvision's scatter | gather | speed-up |")
    print("|---|---:|---:|---:|")
    for engine in ("openvino", "onnxruntime"):
        a, b = statistics.median(times[f"{engine} scatter"]), statistics.median(times[f"{engine} gather"])
        print(f"| {engine} f32 | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
