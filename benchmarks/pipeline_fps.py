"""End-to-end frames/s of ``run()`` -- decode, preprocess, model, post-process, draw, encode,
JSON -- against the model alone and a plain one-thread OpenCV loop, by output and batch size.

Real video (../shared/data/video/vtest.avi, 768x576, 795 frames) on CPU; rounds interleave every
row, so drift hits them alike, and the table gives medians. CPU ms/frame counts every thread of
the process (``time.process_time()``).

``--model instant`` (the default) is a module that returns two fixed boxes without looking at
the frame, so every millisecond measured is the pipeline's own: its ceiling. It takes uint8
frames as they come (``accepts_uint8``); the "float-input model" row shows what the conversion
to float 0..1 adds, as done for every model that does not declare ``accepts_uint8``.
Any other ``--model`` (``d2go``, the shipped int8 TorchScript detector; a registry name, with
``--weights random`` where no COCO weights are; a file) adds "model only" rows (``--no-model-only``
drops them): the model on frames decoded and converted beforehand, the ceiling of any pipeline
with it; the last column divides by the first of them.

Rows by ``--outputs``: mp4 + JSONL (``h264``, the CLI's default, and ``mp4v``), avi (MJPG) + JSONL
(``avi``), JSONL only (``jsonl``), frames drawn then dropped (``none``); each for every
``--batches`` size (batch 1 passes no ``batch_size``, so it runs on versions before batching).
The plain loop reads, gets boxes (the instant model's two, or ``Detector`` on each frame),
draws and writes mp4v. ``--two-processes`` also times that loop (fixed boxes, no model) alone
and as two processes at once, to show whether this machine's cores scale.

``--boxes N`` gives the instant model N boxes per frame (drawing's cost grows with them);
``--render-procs 0 2`` times the annotated-output rows drawing in the writer thread (0) and in N worker
processes (``run(render_procs=N)``, :class:`detector.io.renderpool.RenderPool`).

    .venv/bin/python benchmarks/pipeline_fps.py [--frames 795] [--rounds 2] [--stages] [--two-processes]
    .venv/bin/python benchmarks/pipeline_fps.py --outputs h264 --boxes 40 --render-procs 0 1 2 --no-plain
    .venv/bin/python benchmarks/pipeline_fps.py --model d2go [--frames 150]
    .venv/bin/python benchmarks/pipeline_fps.py --model d2go --frames 120 --outputs avi --batches 1 4 \\
        --no-model-only --no-plain
    .venv/bin/python benchmarks/pipeline_fps.py --model retinanet_resnet50_fpn --weights random --min-size 320
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import VIDEO, Box, decode, machine, median, plain_loop, sized

from detector import Detector, load_config
from detector.io.sinks import JsonlSink
from detector.runner import run

FIXED: list[Box] = [((100, 100, 200, 300), "person 0.90"), ((300, 120, 380, 330), "person 0.80")]
OUTPUTS = {
    "h264": "mp4 (H.264) + JSONL",
    "mp4v": "mp4 (mp4v) + JSONL",
    "avi": "avi (MJPG) + JSONL",
    "jsonl": "JSONL only",
    "none": "no output",
}


class Instant(torch.nn.Module):
    """Two fixed person boxes per image (or ``boxes`` of them, ``--boxes``), whatever the image: a
    model that costs nothing."""

    accepts_uint8 = True

    def __init__(self, boxes: int = 2) -> None:
        super().__init__()
        fixed = [box for box, _ in FIXED]
        # more boxes: a 10-column grid of 60x110 boxes over a 768x576 frame, labels 1..80
        grid = [(20 + 74 * (i % 10), 20 + 50 * (i // 10 % 10), 80 + 74 * (i % 10), 130 + 50 * (i // 10 % 10))
                for i in range(max(0, boxes - 2))]  # fmt: skip
        self.boxes = torch.tensor([[float(v) for v in box] for box in (fixed + grid)[:boxes]])
        self.scores = torch.linspace(0.95, 0.5, len(self.boxes))
        self.labels = torch.arange(len(self.boxes)) % 80 + 1

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": self.boxes, "scores": self.scores, "labels": self.labels} for _ in images]


class FloatInstant(Instant):
    accepts_uint8 = False


def run_kwargs(output: str, d: Path, tag: str) -> dict[str, Any]:
    if output in ("h264", "mp4v"):
        return {"out": d / f"{tag}.mp4", "json": d / f"{tag}.jsonl", "codec": output}
    if output == "avi":
        return {"out": d / f"{tag}.avi", "json": d / f"{tag}.jsonl"}
    return {"sinks": [_Jsonl(d / f"{tag}.jsonl") if output == "jsonl" else _Discard()]}


def model_only(detector: Detector, frames: list[np.ndarray], batch: int) -> float:
    """frames/s of the model on frames decoded, converted to float 0..1 and batched beforehand."""
    tensors = [t.float() / 255 for t in detector.preprocess(frames)]
    batches = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            detector.forward(b)
    return len(tensors) / (time.perf_counter() - start)


def boxes_of(detector: Detector) -> Any:
    def boxes(frame: np.ndarray) -> list[Box]:
        return [((int(x1), int(y1), int(x2), int(y2)), f"{name} {score:.2f}")
                for (x1, y1, x2, y2), score, _, name in detector(frame)]  # fmt: skip

    return boxes


def plain_loops(n: int, frames: int) -> list[float]:
    """frames/s of ``n`` plain loops (fixed boxes), each in its own Python process, started together."""
    code = (f"import sys, tempfile, pathlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "from pipeline_fps import FIXED, plain_loop; "
            f"print(plain_loop({frames}, pathlib.Path(tempfile.mkdtemp()) / 'p.mp4', lambda f: FIXED))")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="instant", help="instant (default), d2go, a registry name or a model file")
    ap.add_argument("--weights", help="e.g. random, for a registry model")
    ap.add_argument("--min-size", type=int)
    ap.add_argument("--outputs", nargs="*", choices=list(OUTPUTS),
                    help="default: all for the instant model, h264 for a real one")  # fmt: skip
    ap.add_argument("--batches", nargs="*", type=int, default=[1], help="batch sizes (run's batch_size)")
    ap.add_argument("--boxes", type=int, default=2, help="boxes the instant model returns per frame (default 2)")
    ap.add_argument("--render-procs", nargs="*", type=int, default=[0],
                    help="run's render_procs for the mp4 rows: 0 draws in the writer thread (default), N in N "
                    "worker processes")  # fmt: skip
    ap.add_argument("--frames", type=int, help="default: 795 (all) for the instant model, 150 for a real one")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                    help="the plain OpenCV loop row (default: on)")  # fmt: skip
    ap.add_argument("--model-only", action=argparse.BooleanOptionalAction, default=True,
                    help="the model-only rows, for a real model (default: on)")  # fmt: skip
    ap.add_argument("--stages", action="store_true", help="also print the stage table of the first row's last run")
    ap.add_argument("--two-processes", action="store_true",
                    help="also time the plain loop (fixed boxes) alone and as two processes at once")  # fmt: skip
    args = ap.parse_args()
    instant = args.model == "instant"
    outputs = args.outputs or (list(OUTPUTS) if instant else ["h264"])
    n = args.frames or (795 if instant else 150)
    if instant:
        detector = Detector(Instant(args.boxes), name="instant", device="cpu", score_threshold=0.0)
    else:
        cfg = load_config(None, {"model": args.model, "weights": args.weights, "device": "cpu", **sized(args.min_size)})
        detector = Detector.from_config(cfg, progress=False)
    cases: list[tuple[str, Detector, str, int, int]] = []  # (row, detector, output, batch, render_procs)
    for output in outputs:
        for b in args.batches:
            row = f"run(): {OUTPUTS[output]}" + (f", batch {b}" if args.batches != [1] else "")
            for procs in args.render_procs if output in ("h264", "mp4v", "avi") else [0]:
                named = row + (f", render_procs {procs}" if args.render_procs != [0] else "")
                cases.append((named, detector, output, b, procs))
            if instant and output == "h264" and b == args.batches[0]:
                float_model = Detector(FloatInstant(args.boxes), name="instant-float", device="cpu",
                                       score_threshold=0.0)  # fmt: skip
                cases.append((f"{row}, float-input model", float_model, output, b, 0))
    fps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # CPU ms per frame, all threads of this process
    last_stats = None
    frames = decode(n) if args.model_only and not instant else []
    if frames:
        model_only(detector, frames[:5], 1)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for i in range(args.rounds):  # interleaved, so drift hits every row alike
            if frames:
                for b in args.batches:
                    row = "model only" + (f", batch {b}" if args.batches != [1] else "")
                    c0 = time.process_time()
                    fps.setdefault(row, []).append(model_only(detector, frames, b))
                    cpu.setdefault(row, []).append((time.process_time() - c0) / len(frames) * 1000)
            for k, (row, det, output, b, procs) in enumerate(cases):
                extra: dict[str, Any] = {"batch_size": b} if b != 1 else {}  # batch 1 runs on versions without it
                if procs:
                    extra["render_procs"] = procs
                c0 = time.process_time()
                r = run(det, VIDEO, max_frames=n, progress=False, **run_kwargs(output, d, f"r{i}-{k}"), **extra)
                cpu.setdefault(row, []).append((time.process_time() - c0) / r.frames * 1000)
                fps.setdefault(row, []).append(r.frames / r.seconds)
                if k == 0:
                    last_stats = r.stats
            if args.plain:
                row = "plain OpenCV loop: mp4v"
                c0, t0 = time.process_time(), time.perf_counter()
                value = plain_loop(n, d / "p.mp4", (lambda f: FIXED) if instant else boxes_of(detector))
                done = value * (time.perf_counter() - t0)  # frames the loop wrote (the video may be shorter)
                fps.setdefault(row, []).append(value)
                cpu.setdefault(row, []).append((time.process_time() - c0) / done * 1000)
    ceiling = next((median(v) for row, v in fps.items() if row.startswith("model only")), None)
    print(f"# run() end to end, model {detector.name}, {n} frames of vtest.avi (768x576), {machine()}")
    print(f"median of {args.rounds} rounds, interleaved\n")
    print("| what | frames/s | CPU ms/frame |" + (" / model-only fps |" if ceiling else ""))
    print("|---|---:|---:|" + ("---:|" if ceiling else ""))
    for row, values in fps.items():
        f = median(values)
        cells = [f"{f:.0f}" if f >= 100 else f"{f:.2f}", f"{median(cpu[row]):.1f}"]
        if ceiling:
            cells.append(f"{f / ceiling:.3f}")
        print(f"| {row} | " + " | ".join(cells) + " |")
    if args.two_processes:
        alone = plain_loops(1, n)
        together = plain_loops(2, n)
        print(f"\nplain loop in its own process: {alone[0]:.0f} frames/s; two such processes at once: "
              f"{' and '.join(f'{v:.0f}' for v in together)} frames/s")  # fmt: skip
    if args.stages and last_stats is not None:
        print("\n" + last_stats.table())


class _Jsonl:
    """A fresh JSON Lines sink per run (``json=`` alone would also write the default video)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> JsonlSink:
        self.sink = JsonlSink(self.path)
        return self.sink.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.sink.__exit__(*exc)


class _Discard:
    def write(self, frame: object, detections: object) -> None:
        pass


if __name__ == "__main__":
    main()
