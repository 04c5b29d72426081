"""GPU throughput: model-only and end-to-end frames/s for the four ResNet-50-FPN models on a
real video, by batch size, precision and torch.compile, with the GPU named in the output.

- model only: frames decoded and moved to the GPU as uint8 beforehand; the model (uint8 to
  float, resize, backbone+FPN, heads, NMS) on batches, timed with the GPU synchronised.
- end to end: ``detector.run()`` on the video (decode, batching, model, drawing, H.264/mp4
  and JSONL writing), as ``detector run VIDEO --batch-size B`` does.
- both paths of the torch engine in the same run (``--paths both``, the default): torchvision's
  own forward (``DETECTOR_BATCHED=off``) and the batched, sync-free one (``on``; the CUDA
  default), with the host syncs of one batch counted (``SyncCounter``), so the gain is a ratio
  from one run; then, per model and precision, whether the two paths gave the same detections
  on one batch (scores exactly, boxes within 1e-3 px; fp16 is expected to agree as well: both
  paths run the same autocast modules on the same padded batch, everything after them in fp32).

Weights: torchvision's COCO weights when found locally (``detector weights list``), else
random-init weights of the same architecture -- the compute per frame is the same, but
random heads keep more boxes after NMS than trained ones, so the post-processing and drawing
cost differ somewhat; the output says which.

    .venv/bin/python benchmarks/gpu.py                          # everything, on cuda
    .venv/bin/python benchmarks/gpu.py --models fasterrcnn_resnet50_fpn --batches 1 8 \\
        --precisions fp16 --compile both --frames 400
    .venv/bin/python benchmarks/gpu.py --device cpu --min-size 128 --frames 6 --batches 1 2 \\
        --models retinanet_resnet50_fpn --rounds 1 --detect-threads 1  # a smoke run (figures mean nothing)
    .venv/bin/python benchmarks/gpu.py --decoders --models   # the decoding stage only: OpenCV vs NVDEC

``--decoders`` times the decoding stage alone (frames/s and the host's CPU ms per frame, to BGR
arrays as the pipeline gets them) on an H.264 copy of the video -- what cameras record; NVDEC has
no decoder for the shared clip's MS-MPEG4 -- with OpenCV, PyAV on the CPU and NVDEC (``--decode``);
``--decode`` picks the decoder of the end-to-end rows (``auto``: NVDEC on CUDA when it can).

``--cuda-graphs`` (or ``--paths all``) adds a third path, ``graphs``: the batched path with its device part
captured and replayed as CUDA graphs (``DETECTOR_CUDA_GRAPHS=on``), timed and checked against torchvision's
in the same run -- item 4's on/off figures.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import VIDEO, decode, median, sync

from detector import Detections, Detector, load_config
from detector.engines.torch_engine import TorchEngine
from detector.models import MODELS
from detector.models import weights as W
from detector.models.batched import SyncCounter
from detector.runner import run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"
    import platform

    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


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


def end_to_end(detector: Detector, video: Path, frames: int, batch: int, threads: int, rounds: int, tmp: Path,
               render_procs: int = 0, decode: str = "auto") -> tuple[float, float, str]:  # fmt: skip
    run(detector, video, out=tmp / "w.mp4", json=tmp / "w.jsonl", max_frames=2 * batch * threads, batch_size=batch,
        detect_threads=threads, progress=False, render_procs=render_procs, decode=decode)  # warm-up  # fmt: skip
    results, table, boxes = [], "", 0.0
    for i in range(rounds):
        r = run(detector, video, out=tmp / f"e{i}.mp4", json=tmp / f"e{i}.jsonl", max_frames=frames,
                batch_size=batch, detect_threads=threads, progress=False, render_procs=render_procs,
                decode=decode)  # fmt: skip
        results.append(r.frames / r.seconds)
        table, boxes = r.stats.table(), r.detections / r.frames
    return median(results), boxes, table


def h264_copy(video: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` frames of ``video`` as an H.264 mp4 (libx264, B-frames), at its size and rate."""
    import av
    import cv2

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps), options={"preset": "veryfast"})
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            ok, image = cap.read()
            if not ok:
                break
            if not stream.codec_context.is_open:
                stream.width, stream.height = image.shape[1], image.shape[0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    cap.release()
    return out


def decode_stage(video: Path, decoder: str, gpu: int | None) -> str:
    """One table row: ``decoder`` (opencv, pyav-cpu, nvdec) decoding all of ``video`` to BGR arrays,
    frames/s and the process's CPU ms per frame (all threads), median of 3 passes after one warm-up."""
    from detector.io.nvdec import NvdecUnavailable, PyAVVideoSource
    from detector.io.sources import VideoFileSource

    def source():  # noqa: ANN202
        if decoder == "opencv":
            return VideoFileSource(video)
        return PyAVVideoSource(video, gpu=gpu if decoder == "nvdec" else None)

    try:
        rates, cpus = [], []
        for i in range(4):
            wall, cpu = time.perf_counter(), time.process_time()
            with source() as frames:
                n = sum(1 for _ in frames)
            if i:
                rates.append(n / (time.perf_counter() - wall))
                cpus.append((time.process_time() - cpu) * 1e3 / n)
    except NvdecUnavailable as exc:
        return f"| {decoder} | unavailable: {exc} | |"
    return f"| {decoder} | {median(rates):.0f} | {median(cpus):.2f} |"


PATHS = {"torchvision": "off", "batched": "on", "graphs": "on"}
"""The torch engine's paths, by the ``DETECTOR_BATCHED`` mode that selects each; ``graphs`` is the batched
path with its device part replayed as CUDA graphs (``DETECTOR_CUDA_GRAPHS=on``)."""


def use_path(detector: Detector, path: str) -> bool:
    """Switch the detector's torch engine to ``path``; False where that path does not cover the model."""
    engine = detector.engine
    if not isinstance(engine, TorchEngine):
        return path == "torchvision"
    engine.cuda_graphs = path == "graphs"
    return engine.use_batched(PATHS[path]) == (path != "torchvision")


def syncs_per_batch(detector: Detector, frames: list, batch: int) -> int:
    """Host syncs (and host/device copies) of one warm batch, forward and postprocess (``SyncCounter``)."""
    tensors = detector.preprocess(frames[:batch])
    detector.postprocess(detector.forward(tensors))
    with SyncCounter(detector.device.type) as counter:
        detector.postprocess(detector.forward(tensors))
    return counter.total


def run_path(detector: Detector, path: str, tensors: list) -> list[Detections]:
    if not use_path(detector, path):
        raise RuntimeError(f"the {path} path does not cover {detector.name}")
    return detector.postprocess(detector.forward(tensors))


def agreement(detector: Detector, frames: list, batch: int, path: str = "batched") -> str:
    """Whether ``path`` (batched or graphs) gave torchvision's detections on one batch: per image the same
    count, the same scores (sorted, exactly) and, row by row in (score, label, box) order, the same labels
    and boxes within 1e-3 px; with the largest differences seen."""
    tensors = detector.preprocess(frames[:batch])
    want = run_path(detector, "torchvision", tensors)
    run_path(detector, path, tensors)  # graphs: a new shape's first batch runs uncaptured, the second replays
    got = run_path(detector, path, tensors)
    same, score_diff, box_diff = 0, 0.0, 0.0
    for a, b in zip(want, got, strict=True):
        if len(a) != len(b):
            continue
        oa = np.lexsort((*a.boxes.T[::-1], a.labels, a.scores))
        ob = np.lexsort((*b.boxes.T[::-1], b.labels, b.scores))
        ds = float(np.abs(a.scores[oa] - b.scores[ob]).max(initial=0.0))
        db = float(np.abs(a.boxes[oa] - b.boxes[ob]).max(initial=0.0))
        score_diff, box_diff = max(score_diff, ds), max(box_diff, db)
        same += ds == 0.0 and db <= 1e-3 and bool((a.labels[oa] == b.labels[ob]).all())
    counts = ", ".join(f"{len(a)}/{len(b)}" for a, b in zip(want, got, strict=True))
    return (f"{same}/{len(want)} images the same; max |score diff| {score_diff:.2e}, max |box diff| "
            f"{box_diff:.2e} px; detections torchvision/batched per image: {counts}")  # fmt: skip


def profile(detector: Detector, frames: list, batch: int) -> None:
    """Where a batch's time goes: wall time against the GPU's busy time, and the top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    tensors = detector.preprocess(frames[:batch])
    for _ in range(3):
        detector.postprocess(detector.forward(tensors))
    sync(detector.device)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(5):
            detector.postprocess(detector.forward(tensors))
        sync(detector.device)
        wall = (time.perf_counter() - start) / 5
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]  # not the ops that launch them
    gpu_us = sum(e.self_device_time_total for e in kernels) / 5
    print(f"\nprofile, batch {batch}: {wall * 1000:.1f} ms per batch wall, GPU busy {gpu_us / 1000:.1f} ms "
          f"({gpu_us / 1000 / (wall * 1000):.0%})")  # fmt: skip
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))


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
    ap.add_argument("--max-detections", type=int, default=100,
                    help="keep at most N boxes per frame (default 100, the models' cap; random weights fill it, far "
                         "more than COCO weights give on a street scene, and drawing costs CPU time)")  # fmt: skip
    ap.add_argument("--detect-threads", nargs="*", type=int, default=[1, 2],
                    help="end to end: batches detected at once (run's detect_threads); model only: one")  # fmt: skip
    ap.add_argument("--channels-last", action="store_true", help="the model in channels-last memory format")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms per input size")
    ap.add_argument("--profile", action="store_true", help="print where the largest batch's time goes (torch.profiler)")
    ap.add_argument(
        "--render-procs",
        type=int,
        default=0,
        help="end to end: draw in N worker processes (run's render_procs; default 0, a thread)",
    )
    ap.add_argument("--decode", choices=("auto", "cpu", "nvdec"), default="auto",
                    help="end to end: where the video is decoded (run's decode; default auto: NVDEC on CUDA "
                    "when it can decode the video)")  # fmt: skip
    ap.add_argument("--decoders", action="store_true",
                    help="first time the decoding stage alone (OpenCV, PyAV on the CPU, NVDEC) on an H.264 copy "
                    "of --frames frames of the video")  # fmt: skip
    ap.add_argument("--paths", choices=("both", "all", *PATHS), default="both",
                    help="the torch engine's path(s) to time: torchvision's own forward, the batched sync-free one "
                         "(the CUDA default), both in the same run (default) for the ratio, or all three with "
                         "the batched path as CUDA graphs")  # fmt: skip
    ap.add_argument("--cuda-graphs", action="store_true", help="add the batched path as CUDA graphs (graphs)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu for a smoke run (figures then mean nothing)")
    frames = decode(min(args.frames, 64), args.video)
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(f"# detector GPU benchmark: {device_name(device)}")
    h, w = frames[0].shape[:2]
    print(f"{args.video.name} {w}x{h}, min_size {args.min_size}, model only on {len(frames)} frames, end to end on "
          f"{args.frames} frames (mp4 + JSONL), median of {args.rounds} rounds, max detections "
          f"{args.max_detections}, cuDNN benchmark {'on' if args.cudnn_benchmark else 'off'}, channels-last "
          f"{'on' if args.channels_last else 'off'}, drawing in "
          f"{f'{args.render_procs} worker process(es)' if args.render_procs else 'the writer thread'}, "
          f"decode {args.decode}\n")  # fmt: skip
    if args.decoders:
        with tempfile.TemporaryDirectory() as tmp:
            copy = h264_copy(args.video, args.frames, Path(tmp) / "h264.mp4")
            gpu = (device.index or 0) if device.type == "cuda" else 0
            print(f"decoding stage alone: {args.frames} frames of {args.video.name} as H.264 ({w}x{h}) to BGR arrays")
            print("| decoder | frames/s | host CPU ms/frame |\n|---|---:|---:|")
            for decoder in ("opencv", "pyav-cpu", "nvdec"):
                if decoder == "nvdec" and device.type != "cuda":
                    print(f"| nvdec | not tried: --device {args.device} | |")
                    continue
                print(decode_stage(copy, decoder, gpu), flush=True)
            print()
    paths = {"both": ["torchvision", "batched"], "all": list(PATHS)}.get(args.paths, [args.paths])
    if args.cuda_graphs and "graphs" not in paths:
        paths.append("graphs")
    print("| model | weights | precision | compile | path | syncs/batch | batch | model only, frames/s "
          "| detect threads | end to end, frames/s | boxes/frame | first batch, s |")  # fmt: skip
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, compiled in itertools.product(args.models, args.precisions, compiles):
            if precision == "fp16" and device.type != "cuda":
                continue
            weights = "random" if W.find_local(MODELS[name]) is None else None
            cfg = load_config(None, {"model": name, "weights": weights, "device": args.device, "precision": precision,
                                     "min_size": args.min_size, "max_size": args.max_size,
                                     "compile": compiled, "max_detections": args.max_detections,
                                     "channels_last": args.channels_last})  # fmt: skip
            torch.manual_seed(0)
            detector = Detector.from_config(cfg, progress=False)
            kind = "COCO" if weights is None else "random"
            for path in paths:
                if not use_path(detector, path):
                    print(f"| {name} | {kind} | {precision} | {'on' if compiled else 'off'} | {path} | - | - "
                          "| not covered | | | | |", flush=True)  # fmt: skip
                    continue
                # a dispatch mode cannot watch a captured graph: the graphs path runs the batched path's ops
                syncs = "as batched" if path == "graphs" else syncs_per_batch(detector, frames, max(args.batches))
                for batch in args.batches:
                    mo, warm = model_only(detector, frames, batch, args.rounds)
                    for threads in args.detect_threads:
                        e2e, boxes, table = end_to_end(detector, args.video, args.frames, batch, threads, args.rounds,
                                                       Path(tmp), args.render_procs, args.decode)  # fmt: skip
                        print(f"| {name} | {kind} | {precision} | {'on' if compiled else 'off'} | {path} | {syncs} "
                              f"| {batch} | {mo:.1f} | {threads} | {e2e:.1f} | {boxes:.1f} | {warm:.1f} |",
                              flush=True)  # fmt: skip
                        if args.stages:
                            print("\n" + table + "\n", flush=True)
            for fast_path in (p for p in ("batched", "graphs") if p in paths and "torchvision" in paths):
                if not use_path(detector, fast_path):
                    continue
                check = agreement(detector, frames, max(args.batches), fast_path)
                fast = detector.engine.batched if isinstance(detector.engine, TorchEngine) else None
                redone = f"; {fast.fallbacks} of {fast.images} images redone by torchvision" if fast else ""
                checks.append(f"- {name} {precision}{' compiled' if compiled else ''}, {fast_path}, batch "
                              f"{max(args.batches)}: {check}{redone}")  # fmt: skip
            if args.profile:
                for path in paths:
                    if use_path(detector, path):
                        print(f"\n{name} {precision}, {path} path:")
                        profile(detector, frames, max(args.batches))
            del detector
            torch._dynamo.reset()  # compiled graphs of this model must not count against the next one's
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if checks:
        print("\nbatched path against torchvision's on the same batch:")
        print("\n".join(checks))


if __name__ == "__main__":
    main()
