"""Per-frame latency of the registry models on each engine and precision, against torch eager fp32.

For every model and min_size: random-init weights (compute does not depend on
the values), exported once to ONNX with ``detector export``'s code, then run
through ``Detector`` (preprocessing and postprocessing included) on one real
frame of ``vtest.avi`` resized to 640x480. Variants are interleaved round by
round (torch fp32, torch bf16, ONNX Runtime, OpenVINO f32, OpenVINO bf16, ...)
so machine load hits them alike; each is warmed up once first (OpenVINO
compiles there). Reported: the median per frame and the ratio to torch eager
fp32 in the same run, and for fp32 engines the largest box difference to torch
fp32 over the top-10 detections (the "correct" in "fastest correct setting"), and for
bf16 the share of distinct scores among the detections (ties are what bf16 scores
leave behind).
bf16 variants are skipped where the CPU has no native bf16 (torch would emulate
it, many times slower than fp32; OpenVINO would silently run f32).

    .venv/bin/python benchmarks/engines.py [--models ...] [--sizes 320 480 800] [--rounds 3] [--json out.jsonl]

An AVX2-only CPU (no VNNI, no AVX-512) can be emulated on a newer one: oneDNN, inside both OpenVINO's CPU
plugin and torch, honours ``ONEDNN_MAX_CPU_ISA`` (OpenVINO then runs ``jit_avx2_I8`` kernels where it ran
``brgconv_avx512_I8``; checked in its runtime model), and torch's own kernels ``ATEN_CPU_CAPABILITY``:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/engines.py --sizes 320 \
        --variants torch-fp32 openvino-fp32 openvino-int8

The ratios are the kernels'; the clock, caches and memory are still this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from common import cpu_flags, machine, real_frame

from detector import Detector, load_config
from detector.engines.export import calibration_for, export_model, weights_sha256
from detector.engines.openvino_engine import ISA_CAP_ENV, isa_allows
from detector.models import MODELS, build_model
from detector.structures import Detections

VARIANTS = (
    "torch-fp32",
    "torch-bf16",
    "onnxruntime-fp32",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "openvino-wholebf16",
)
"""``openvino-wholebf16``: the whole graph under OpenVINO's bf16 hint, as before the graph was cut into
f32/bf16 segments (scores then tie): what keeping predictors, decoding and NMS in f32 costs."""


def whole_graph_bf16(onnx: Path) -> Detector:
    from detector.engines.openvino_engine import OpenVINOEngine

    class WholeGraph(OpenVINOEngine):
        def _compile(self, model: object) -> object:
            return self.core.compile_model(model, "CPU", self._config).create_infer_request()

    return Detector(WholeGraph(onnx, precision="bf16"), precision="bf16", score_threshold=0.05)


def top_box_error(ref: Detections, got: Detections, top: int = 10) -> float:
    """Largest distance (px) from each of torch's top detections to the nearest same-label one of ``got``."""
    worst = 0.0
    for k in np.argsort(-ref.scores, kind="stable")[:top]:
        same = got.labels == ref.labels[k]
        if not same.any():
            return float("inf")
        worst = max(worst, float(np.abs(got.boxes[same] - ref.boxes[k]).max(1).min()))
    return worst


def build_variants(
    name: str, size: int, workdir: Path, wanted: list[str], proposals: int | None = None
) -> dict[str, Detector]:
    values = {"model": name, "min_size": size, "max_size": round(size * 4 / 3), "score_threshold": 0.05,
              "device": "cpu", **({"rpn_post_nms_top_n": proposals} if proposals else {})}  # fmt: skip
    torch.manual_seed(0)
    cfg = load_config(None, {**values, "weights": "random"})
    model, names, _ = build_model(cfg)
    weights = workdir / f"{name}.pth"
    torch.save(model.state_dict(), weights)
    cfg = cfg.replace(weights=str(weights))
    onnx = workdir / f"{name}-{size}.onnx"
    if any(not v.startswith("torch") for v in wanted):
        export_model(model, cfg, names, onnx, fmt="onnx", weights_sha=weights_sha256(cfg), progress=True)
    dets: dict[str, Detector] = {}
    for variant in wanted:
        engine, precision = variant.rsplit("-", 1)
        if engine == "torch":
            dets[variant] = Detector.from_config(cfg.replace(precision=precision))
        elif precision == "wholebf16":
            dets[variant] = whole_graph_bf16(onnx)
        elif precision == "int8":  # quantized with NNCF on 30 frames of the shipped clip, as --precision int8 is
            xml = workdir / f"{name}-{size}-int8.xml"
            int8 = cfg.replace(precision="int8")
            export_model(model, int8, names, xml, fmt="openvino", weights_sha=weights_sha256(cfg), progress=True,
                         calibration=calibration_for(int8))  # fmt: skip
            dets[variant] = Detector.from_config(load_config(None, {"model": str(xml), "score_threshold": 0.05}))
        else:
            exported = {"model": str(onnx), "engine": engine, "precision": precision, "score_threshold": 0.05}
            dets[variant] = Detector.from_config(load_config(None, exported))
    return dets


def warm_up(det: Detector, frame: np.ndarray, *, tolerance: float = 0.10, most: int = 12) -> Detections:
    """Call until two successive calls agree within ``tolerance`` (on a fresh machine the first calls of
    torch fp32 ran 9x slower than later ones); returns the last detections."""
    last, previous = None, float("inf")
    for _ in range(most):
        start = time.perf_counter()
        last = det(frame)
        took = time.perf_counter() - start
        if abs(took - previous) <= tolerance * previous:
            break
        previous = took
    assert last is not None
    return last


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--sizes", nargs="*", type=int, default=[320, 480, 800])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--json", type=Path, help="also append one JSON line per model and size here")
    ap.add_argument("--proposals", type=int, help="Faster R-CNN: proposals kept after the RPN's NMS (default 1000)")
    args = ap.parse_args()
    flags = cpu_flags()
    native_bf16 = any(f in flags and isa_allows(f) for f in ("avx512_bf16", "amx_bf16"))
    wanted = [v for v in args.variants if native_bf16 or not v.endswith("bf16")]
    skipped = [v for v in args.variants if v not in wanted]
    frame = cv2.resize(real_frame(0), (640, 480), interpolation=cv2.INTER_AREA)
    print(f"# engines, 640x480 frame, {machine()}, native bf16: {native_bf16}, CPU flags: {' '.join(flags)}")
    cap = os.environ.get(ISA_CAP_ENV)
    if cap:
        dot = [f for f in ("avx_vnni", "avx512_vnni", "amx_int8") if f in flags and isa_allows(f, cap)]
        aten = os.environ.get("ATEN_CPU_CAPABILITY", "-")
        print(f"# {ISA_CAP_ENV}={cap} (ATEN_CPU_CAPABILITY={aten}): oneDNN's kernels (OpenVINO's and torch's) "
              f"stop at {cap}; int8 dot products usable: {' '.join(dot) or 'none'}")  # fmt: skip
    if skipped:
        print(f"skipped (no native bf16 on this CPU): {', '.join(skipped)}")
    print(f"median s per frame over {args.rounds} interleaved rounds after warm-up (two calls within 10%) "
          "(x = speed-up over torch fp32; d = max box difference to torch fp32 on the top-10 detections, px; "
          "u = distinct scores / detections)")  # fmt: skip
    print("| model | min_size | " + " | ".join(wanted) + " |")
    print("|---|---:|" + "---:|" * len(wanted), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for size in args.sizes:
                dets = build_variants(name, size, Path(tmp), wanted, args.proposals)
                ref = dets["torch-fp32"](frame) if "torch-fp32" in dets else None
                first = {v: warm_up(d, frame) for v, d in dets.items()}  # OpenVINO compiles here
                errors = {v: top_box_error(ref, got) for v, got in first.items() if ref is not None}
                distinct = {v: f"{len(np.unique(got.scores))}/{len(got)}" for v, got in first.items()}
                times: dict[str, list[float]] = {v: [] for v in dets}
                for _ in range(args.rounds):
                    for v, d in dets.items():
                        times[v].append(timed(lambda d=d: d(frame)))
                med = {v: statistics.median(t) for v, t in times.items()}
                base = med.get("torch-fp32")
                cells = []
                for v in dets:
                    cell = f"{med[v]:.3f} s"
                    if base is not None and v != "torch-fp32":
                        cell += f" ({base / med[v]:.2f}x"
                        cell += f", d {errors[v]:.3f})" if v.endswith("fp32") else f", u {distinct[v]})"
                    cells.append(cell)
                print(f"| {name} | {size} | " + " | ".join(cells) + " |", flush=True)
                if args.json is not None:
                    with args.json.open("a") as f:
                        f.write(json.dumps({"model": name, "min_size": size, "median_s": med, "times_s": times,
                                            "top10_max_box_diff_px": errors}) + "\n")  # fmt: skip
                del dets


if __name__ == "__main__":
    main()
