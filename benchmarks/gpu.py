"""GPU throughput: model-only and end-to-end frames/s for the four ResNet-50-FPN models on a
real video, by batch size, precision and torch.compile, with the GPU named in the output.

- model only: frames decoded and moved to the GPU as uint8 beforehand; the model (uint8 to
  float, resize, backbone+FPN, heads, NMS) on batches, timed with the GPU synchronised.
- end to end: ``detector.run()`` on the video (decode, batching, model, drawing, H.264/mp4
  and JSONL writing), as ``detector run VIDEO --batch-size B`` does.

Weights: torchvision's COCO weights when found locally (``detector weights list``), else
random-init weights of the same architecture -- the compute per frame is the same, but
random heads keep more boxes after NMS than trained ones, so the post-processing and drawing
cost differ somewhat; the output says which.

    .venv/bin/python benchmarks/gpu.py                          # everything, on cuda
    .venv/bin/python benchmarks/gpu.py --models fasterrcnn_resnet50_fpn --batches 1 8 \\
        --precisions fp16 --compile both --frames 400
    .venv/bin/python benchmarks/gpu.py --device cpu --min-size 128 --frames 6 --batches 1 2  # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch
from common import VIDEO, decode, median

from detector import Detector, load_config
from detector.models import MODELS
from detector.models import weights as W
from detector.runner import run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"
    import platform

    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(detector: Detector, frames: list, batch: int, rounds: int) -> tuple[float, float]:
    """Median frames/s, and the seconds the first (warm-up, compiling) batch took."""
    tensors = detector.preprocess(frames)
    batches = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]
    start = time.perf_counter()
    detector.postprocess(detector.forward(batches[0]))  # warm-up (and compile)
    warm = time.perf_counter() - start
    results = []
    for _ in range(rounds):
        sync(detector.device)
        start = time.perf_counter()
        for b in batches:
            outputs = detector.forward(b)
        detector.postprocess(outputs)  # copies the last results back: the GPU is done
        sync(detector.device)
        results.append(len(tensors) / (time.perf_counter() - start))
    return median(results), warm


def end_to_end(detector: Detector, video: Path, frames: int, batch: int, rounds: int, tmp: Path) -> tuple[float, str]:
    run(detector, video, out=tmp / "w.mp4", json=tmp / "w.jsonl", max_frames=2 * batch, batch_size=batch,
        progress=False)  # warm-up  # fmt: skip
    results, table = [], ""
    for i in range(rounds):
        r = run(detector, video, out=tmp / f"e{i}.mp4", json=tmp / f"e{i}.jsonl", max_frames=frames,
                batch_size=batch, progress=False)  # fmt: skip
        results.append(r.frames / r.seconds)
        table = r.stats.table()
    return median(results), table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--precisions", nargs="*", default=["fp32", "fp16"], choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off",
                    help="torch.compile of backbone+FPN (each compiled row pays a warm-up, reported)")  # fmt: skip
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--frames", type=int, default=256, help="frames per end-to-end round (model only: 64)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--video", type=Path, default=VIDEO, help="a real video (default: ../shared's vtest.avi)")
    ap.add_argument("--stages", action="store_true", help="print the stage table of every end-to-end row")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu for a smoke run (figures then mean nothing)")
    frames = decode(min(args.frames, 64), args.video)
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(f"# detector GPU benchmark: {device_name(device)}")
    h, w = frames[0].shape[:2]
    print(f"{args.video.name} {w}x{h}, min_size {args.min_size}, model only on {len(frames)} frames, end to end on "
          f"{args.frames} frames (mp4 + JSONL), median of {args.rounds} rounds\n")  # fmt: skip
    print("| model | weights | precision | compile | batch | model only, frames/s | end to end, frames/s "
          "| first batch, s |")  # fmt: skip
    print("|---|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, compiled in itertools.product(args.models, args.precisions, compiles):
            if precision == "fp16" and device.type != "cuda":
                continue
            weights = "random" if W.find_local(MODELS[name]) is None else None
            cfg = load_config(None, {"model": name, "weights": weights, "device": args.device, "precision": precision,
                                     "min_size": args.min_size, "max_size": args.max_size,
                                     "compile": compiled})  # fmt: skip
            torch.manual_seed(0)
            detector = Detector.from_config(cfg, progress=False)
            for batch in args.batches:
                mo, warm = model_only(detector, frames, batch, args.rounds)
                e2e, table = end_to_end(detector, args.video, args.frames, batch, args.rounds, Path(tmp))
                warm_text = f"{warm:.1f}"
                kind = "COCO" if weights is None else "random"
                print(f"| {name} | {kind} | {precision} | {'on' if compiled else 'off'} | {batch} | {mo:.1f} "
                      f"| {e2e:.1f} | {warm_text} |", flush=True)  # fmt: skip
                if args.stages:
                    print("\n" + table + "\n", flush=True)
            del detector
            torch._dynamo.reset()  # compiled graphs of this model must not count against the next one's
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
