"""End-to-end fps of ``detector run``'s pipeline vs the model alone, and vs a plain
sequential OpenCV loop (read, infer, draw, write), side by side in one run.

Real video (../shared/data/video/vtest.avi, 768x576) and the real TorchScript
model, on CPU. "model only" calls the model on frames decoded and converted
beforehand, so it is the ceiling any pipeline can reach.

    .venv/bin/python benchmarks/pipeline_fps.py [--frames 150] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SHARED, VIDEO, Box, decode, machine, median
from common import plain_loop as common_plain_loop

from detector import Detector, load_config
from detector.runner import run

MODEL = SHARED / "models" / "d2go_faster_rcnn_fbnetv3a_c4_coco_int8.torchscript.pt"


def model_only(model: torch.jit.ScriptModule, frames: list) -> float:
    tensors = [torch.from_numpy(f[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255 for f in frames]
    start = time.perf_counter()
    with torch.inference_mode():
        for t in tensors:
            model([t])
    return len(frames) / (time.perf_counter() - start)


def plain_loop(model: torch.jit.ScriptModule, n: int, out: Path) -> float:
    """What a hand-written OpenCV script does: one frame at a time, every stage in turn."""

    def boxes_of(frame: np.ndarray) -> list[Box]:
        x = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
        with torch.inference_mode():
            det = model([x])[1][0]
        pairs = zip(det["boxes"].tolist(), det["scores"].tolist(), strict=True)
        return [((int(x1), int(y1), int(x2), int(y2)), f"{s:.2f}") for (x1, y1, x2, y2), s in pairs if s >= 0.5]

    return common_plain_loop(n, out, boxes_of)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    detector = Detector.from_config(load_config(None, {"model": str(MODEL)}))
    frames = decode(args.frames)
    model_only(detector.model, frames[:5])  # warm-up
    results: dict[str, list[float]] = {"model only": [], "detector run (pipeline)": [], "plain OpenCV loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            results["model only"].append(model_only(detector.model, frames))
            r = run(detector, VIDEO, out=Path(tmp) / "p.mp4", json=Path(tmp) / "p.jsonl",
                    max_frames=args.frames, progress=False)  # fmt: skip
            results["detector run (pipeline)"].append(r.frames / r.seconds)
            results["plain OpenCV loop"].append(plain_loop(detector.model, args.frames, Path(tmp) / "n.mp4"))
    ceiling = median(results["model only"])
    print(f"# end-to-end fps, {args.frames} frames of vtest.avi (768x576), TorchScript model, {machine()}")
    print(f"median of {args.rounds} rounds, interleaved\n")
    print("| what | fps | / model-only fps |")
    print("|---|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {median(values):.2f} | {median(values) / ceiling:.3f} |")


if __name__ == "__main__":
    main()
