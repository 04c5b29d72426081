"""OpenVINO f32 vs bf16 vs int8 (NNCF) per frame, and int8/bf16 fidelity to f32, for the registry models.

Per model: random weights (``weights: random``, seed 0; compute does not depend on the values,
fidelity does: see the README), exported with ``detector export``'s code at ``--size`` (score 0.05),
quantized by :func:`detector.engines.quantize.quantize_openvino` calibrated on ``--calibration`` frames
spread over vtest.avi. Timed: the model alone (``OpenVINOEngine``: f32; bf16 = the project's
segmented engine; int8 = the quantized IR under the f32 hint), one real 640x480 frame. Each variant is
warmed up until two successive calls agree within 10%, then the variants are interleaved round by
round (machine load hits them alike) and the median reported. Fidelity: FPN-output cosine per level
(lowest over the frames) and matched top-10 boxes against f32 on ``--fidelity-frames`` other frames.

    .venv/bin/python benchmarks/int8.py [--models ...] [--size 320] [--rounds 7] [--calibration 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import torch
from common import VIDEO, cpu_flags, machine

from detector import load_config
from detector.engines.export import export_model, weights_sha256
from detector.engines.openvino_engine import ISA_CAP_ENV, OpenVINOEngine, cpu_has_bf16, int8_dot_product_flags
from detector.engines.quantize import fidelity, quantize_openvino, read_calibration
from detector.models import build_model


def warm(engine: OpenVINOEngine, x: torch.Tensor, tries: int = 20) -> int:
    """Call until two successive calls agree within 10% (compile and caches settle); returns the calls made."""
    last = float("inf")
    for i in range(tries):
        start = time.perf_counter()
        engine([x])
        now = time.perf_counter() - start
        if abs(now - last) <= 0.1 * min(now, last):
            return i + 1
        last = now
    return tries


def coco_ap(names: list[str], size: int) -> None:
    """COCO AP of fp32, bf16 and int8 on ``../shared``'s coco-mini, for each model whose torchvision COCO
    weights can be found (``weights/``, torch's hub cache): int8 calibrated on the dataset's own images,
    as ``detector eval --precision int8`` does. Where the weights are missing it says so in one line."""
    from common import SHARED

    from detector import Detector
    from detector.errors import WeightsError
    from detector.eval import load_dataset
    from detector.eval.evaluator import evaluate
    from detector.models import get_spec
    from detector.models import weights as W

    images = SHARED / "data" / "coco-mini" / "val2017"
    dataset = load_dataset(images.parent / "annotations" / "instances_val2017.json", images)
    for name in names:
        try:
            W.resolve(get_spec(name), None, offline=True, progress=False)
        except WeightsError as exc:
            print(f"# COCO AP {name}: not computed, no COCO weights on this machine ({exc})")
            continue
        for precision in ("fp32", "bf16", "int8"):
            cfg = load_config(None, {"model": name, "min_size": size, "max_size": round(size * 4 / 3),
                                     "engine": "openvino", "precision": precision, "calibration": str(images),
                                     "score_threshold": 0.05})  # fmt: skip
            report = evaluate(Detector.from_config(cfg, progress=False), dataset, progress=False)
            print(f"# COCO AP {name} {precision} at {size} px on coco-mini: {report.metrics['AP']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn"])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calibration", type=int, default=30, help="frames spread over vtest.avi")
    ap.add_argument("--fidelity-frames", type=int, default=3)
    ap.add_argument("--proposals", type=int, help="Faster R-CNN: proposals kept after the RPN's NMS (default 1000)")
    args = ap.parse_args()
    core = ov.Core()
    bf16 = cpu_has_bf16(core)
    print(f"# int8 (NNCF) vs bf16 vs f32 on OpenVINO {ov.get_version()}, {machine()}")
    print(f"# CPU flags: {' '.join(cpu_flags()) or 'unknown'}; OpenVINO capabilities: "
          f"{', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}")  # fmt: skip
    if os.environ.get(ISA_CAP_ENV):
        print(f"# {ISA_CAP_ENV}={os.environ[ISA_CAP_ENV]}: OpenVINO's kernels are capped (an AVX2 cap emulates an "
              f"AVX2-only CPU, int8 without VNNI); int8 dot products usable: {int8_dot_product_flags() or 'none'}; "
              f"native bf16: {bf16}")  # fmt: skip
    coco_ap(args.models, args.size)
    print(
        "# weights for timing and fidelity: random (seed 0)"
        + (f"; Faster R-CNN with {args.proposals} proposals" if args.proposals else "")
    )
    calibration = read_calibration(VIDEO, args.calibration)
    print(f"# calibration: {len(calibration)} frames of {VIDEO.name}, key {calibration.key}, {calibration.description}")
    # fidelity frames: between the calibration frames (vtest.avi has 795)
    fid = read_calibration(VIDEO, args.fidelity_frames + 2).frames[1:-1]
    frame = cv2.resize(cv2.VideoCapture(str(VIDEO)).read()[1], (640, 480), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1].transpose(2, 0, 1)) / np.float32(255.0))
    rows, fidelity_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            sizes = {"min_size": args.size, "max_size": round(args.size * 4 / 3)}
            limits = {"rpn_post_nms_top_n": args.proposals} if args.proposals else {}
            cfg = load_config(None, {"model": name, "weights": "random", **sizes, "score_threshold": 0.05, **limits})
            model, names, _ = build_model(cfg)
            onnx = Path(tmp) / f"{name}.onnx"
            export_model(model, cfg, names, onnx, fmt="onnx", weights_sha=weights_sha256(cfg, model), progress=False)
            del model
            start = time.perf_counter()
            q = quantize_openvino(onnx, calibration)
            took = time.perf_counter() - start
            xml = Path(tmp) / f"{name}-int8.xml"
            ov.save_model(q, str(xml), compress_to_fp16=False)
            for v in fidelity(onnx, q, fid, top=10).values():
                fidelity_rows.append(f"{name}: {v.row()}")
            del q
            engines = {"f32": OpenVINOEngine(onnx), "int8": OpenVINOEngine(xml)}
            if bf16:
                engines["bf16"] = OpenVINOEngine(onnx, precision="bf16")
            calls = {k: warm(e, x) for k, e in engines.items()}
            times: dict[str, list[float]] = {k: [] for k in engines}
            for _ in range(args.rounds):
                for k, e in engines.items():
                    start = time.perf_counter()
                    e([x])
                    times[k].append((time.perf_counter() - start) * 1000)
            med = {k: statistics.median(t) for k, t in times.items()}
            cells = [f"{med[k]:.1f} ms ({med['f32'] / med[k]:.2f}x)" for k in ("f32", "bf16", "int8") if k in med]
            rows.append(f"| {name} | {args.size} | " + " | ".join(cells) + f" | {took:.0f} s |")
            every = {k: [round(t) for t in v] for k, v in times.items()}
            print(f"# {name}: warm-up calls {calls}; all times ms {every}", flush=True)
            del engines
    print(f"\nmodel-only ms per 640x480 frame, median of {args.rounds} interleaved rounds (x = speed-up over f32)")
    print("| model | min_size | f32 | " + ("bf16 | " if bf16 else "") + "int8 | quantize time |")
    print("|---|---:|---:|" + ("---:|" if bf16 else "") + "---:|---:|")
    print("\n".join(rows))
    print(f"\nfidelity against OpenVINO f32 on {len(fid)} other frames of {VIDEO.name} (native 768x576):")
    print("\n".join(fidelity_rows))


if __name__ == "__main__":
    main()
