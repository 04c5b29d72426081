"""``detector run | eval | weights`` -- the only place that configures logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DetectorConfig, load_config
from .errors import DetectorError

if TYPE_CHECKING:
    from .eval.evaluator import EvalReport

log = logging.getLogger("detector")
FAST_PRESET = Path(__file__).resolve().parents[1] / "configs" / "fast_cpu.yaml"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", type=Path, help="YAML config (see configs/); flags below override it")
    g.add_argument("--model", help="registry name (default fasterrcnn_resnet50_fpn) or a TorchScript file")
    g.add_argument(
        "--weights", help="a .pth file, or 'random' for untrained weights (default: torchvision's COCO weights)"
    )
    g.add_argument("--score", type=float, dest="score_threshold", help="minimum score to keep (default 0.5)")
    g.add_argument("--classes", help="keep only these classes, comma-separated names or ids, e.g. person,car")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="inference precision (default fp32)")
    g.add_argument("--min-size", type=int, dest="min_size", help="shorter side the model resizes to")
    g.add_argument("--max-size", type=int, dest="max_size", help="cap on the longer side after resizing")
    g.add_argument("--offline", action="store_true", help="never download weights")
    g.add_argument("--engine", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="inference engine (default auto: torch, or the file's own for .xml/.onnx models); "
                   "openvino/onnxruntime export a registry model on first use into a cache")  # fmt: skip
    g.add_argument("--fast", action="store_true", help=f"use the fastest correct CPU preset ({FAST_PRESET.name})")


def _config_from(args: argparse.Namespace) -> DetectorConfig:
    keys = ("model", "weights", "score_threshold", "classes", "device", "precision", "min_size", "max_size", "engine")
    if args.fast and args.config is not None:
        raise DetectorError("--fast is a config preset; give either --fast or --config")
    return load_config(FAST_PRESET if args.fast else args.config, {k: getattr(args, k) for k in keys})


def cmd_run(args: argparse.Namespace) -> int:
    from .io.sources import open_source
    from .models import Detector
    from .run import DEFAULT_SOURCE, plan_outputs, run

    cfg = _config_from(args)
    for flag, value, least in (
        ("--max-frames", args.max_frames, 1),
        ("--stride", args.stride, 1),
        ("--start", args.start, 0),
    ):
        if value is not None and value < least:
            raise DetectorError(f"{flag} must be at least {least}, got {value}")
    # Check input, outputs and views before the (slow) model load, so mistakes fail fast.
    if args.serve is not None:
        from .io.browser import parse_address

        parse_address(args.serve)
    if args.show:
        from .io.window import check_gui

        check_gui()
    source = open_source(args.source if args.source is not None else DEFAULT_SOURCE,
                         stride=args.stride or 1, start=args.start or 0, end=args.end)  # fmt: skip
    try:
        out, json_path = plan_outputs(source, args.out, args.json, live_view=bool(args.serve or args.show))
        detector = Detector.from_config(cfg, progress=not args.quiet)
    except BaseException:
        source.close()
        raise
    log.info("model %s on %s (%s); input %s", detector.name, detector.device, detector.precision, source.info.path)
    result = run(detector, source, out=out, json=json_path, max_frames=args.max_frames, progress=not args.quiet,
                 serve=args.serve, show=args.show, hud=args.hud)  # fmt: skip
    fps = result.frames / result.seconds if result.seconds > 0 else 0.0
    print(f"{result.frames} frames, {result.detections} detections, {fps:.2f} frames/s")
    if result.out is not None:
        print(f"annotated: {result.out}")
    if result.json is not None:
        print(f"detections: {result.json}")
    if args.stats is not None:
        print(result.stats.table())
        if args.stats != "-":
            Path(args.stats).write_text(json.dumps(result.stats.summary(), indent=2) + "\n", encoding="utf-8")
            print(f"stats: {args.stats}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``detector export MODEL --format onnx|openvino``: a self-contained file plus its JSON sidecar."""
    from .engines.export import describe, export_from_config

    cfg = load_config(args.config, {"model": args.model, "weights": args.weights, "min_size": args.min_size,
                                    "max_size": args.max_size, "score_threshold": args.score_threshold,
                                    "precision": args.precision})  # fmt: skip
    suffix = ".xml" if args.format == "openvino" else ".onnx"
    out = args.out if args.out is not None else Path("exports") / f"{cfg.model}-{cfg.min_size}{suffix}"
    if out.suffix != suffix:
        out = out / f"{cfg.model}-{cfg.min_size}{suffix}" if out.suffix == "" else out
    path, sidecar = export_from_config(cfg, fmt=args.format, out=out, progress=not args.quiet)
    print(f"exported: {path} ({describe(sidecar)})")
    print(f"sidecar: {path.with_suffix('.json')}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .models import MODELS
    from .models import weights as W

    names = args.names or list(MODELS)
    for name in names:
        if name not in MODELS:
            raise DetectorError(f"unknown model '{name}'; use one of {', '.join(MODELS)}")
    status = 0
    for name in names:
        spec = MODELS[name]
        local = W.find_local(spec)
        if args.action == "list":
            where = str(local) if local else "missing"
            print(f"{name:28s} {spec.file_name:48s} COCO box mAP {spec.box_map:4.1f}  {where}")
        elif args.action == "download":
            path = local or W.download(spec, progress=not args.quiet)
            W.verify(path)
            print(f"{name}: {path}")
        else:  # verify
            if local is None:
                print(f"{name}: missing ({spec.file_name}, from {spec.url})")
                status = 1
                continue
            prefix = W.verify(local)
            print(f"{name}: ok, sha256 starts with {prefix} ({local})")
    if args.action == "list":
        dirs = ", ".join(str(d) for d in W.weights_dirs())
        print(f"searched: {dirs}, {W.hub_checkpoints_dir()}")
    return status


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import CocoEvaluator, load_dataset
    from .eval.dataset import DatasetError
    from .eval.evaluator import EvalReport
    from .eval.scoring import score_results_file

    if args.images is None and args.results is None:
        raise DatasetError("give --images DIR to run a model, or --results FILE.json to score existing detections")
    if args.batch_size < 1:
        raise DatasetError(f"--batch-size must be at least 1, got {args.batch_size}")
    dataset = load_dataset(args.annotations, args.images if args.results is None else None, args.limit)
    if args.results is not None:
        scores = score_results_file(dataset.coco, args.results, dataset.image_ids, args.backend)
        report = EvalReport(scores, args.results.name, len(dataset))
        return _finish_eval(args, report, write_results=False)
    import torch.distributed as dist

    from .models import MODELS, Detector

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    overrides = {}
    if args.score_threshold is None and args.config is None:
        # torchvision scores its COCO models at 0.05; a TorchScript model's own threshold stands
        overrides["score_threshold"] = 0.05 if (args.model or "fasterrcnn_resnet50_fpn") in MODELS else 0.0
    cfg = _config_from(args).replace(**overrides) if overrides else _config_from(args)
    if distributed:
        import torch

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
            cfg = cfg.replace(device=f"cuda:{local_rank}")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        detector = Detector.from_config(cfg, progress=not args.quiet)
        evaluator = CocoEvaluator(dataset, class_names=detector.class_names, backend=args.backend)
        report = evaluator.evaluate(detector, batch_size=args.batch_size, progress=not args.quiet)
        if distributed and dist.get_rank() != 0:
            return 0
        return _finish_eval(args, report, write_results=True)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _finish_eval(args: argparse.Namespace, report: EvalReport, *, write_results: bool) -> int:
    """Print the summary, per-class table and speed; write the output files (rank 0 only)."""
    from .eval.report import console_table, write_outputs

    print(report.scores.summary.rstrip())
    print(console_table(report.scores))
    if report.speed is not None:
        sp = report.speed.as_dict()
        print(
            f"speed: model {sp['model_ms_per_image']:.1f} ms/image, total {sp['total_ms_per_image']:.1f} ms/image, "
            f"{sp['images_per_second']:.2f} images/s; scoring {report.scores.seconds:.2f} s ({report.scores.backend})"
        )
    written = write_outputs(report, args.out, write_results=write_results)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detector", description="Real-time object detection with torchvision detectors."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="detect on a camera, stream, video file, image or folder of images")
    p.add_argument(
        "source", nargs="?", help="camera index (0), stream URL, image, folder, glob or video (default: demo clip)"
    )
    p.add_argument("--out", type=Path, help="annotated output: a video/image file, or a folder for image folders")
    p.add_argument("--json", type=Path, help="JSON Lines detections (default: next to --out)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument(
        "--serve", metavar="[HOST:]PORT", help="browser live view (MJPEG over HTTP), bound to 127.0.0.1 by default"
    )
    p.add_argument("--show", action="store_true", help="show a window (needs GUI OpenCV; q or Esc stops)")
    p.add_argument("--hud", action="store_true", help="draw fps, latency, model and frame index on every frame")
    p.add_argument("--stride", type=int, help="video files: process every N-th frame")
    p.add_argument("--start", type=int, help="video files: first frame index")
    p.add_argument("--end", type=int, help="video files: stop before this frame index")
    p.add_argument("--stats", nargs="?", const="-", metavar="PATH",
                   help="print per-stage timings; with PATH also write them as JSON")  # fmt: skip
    _add_model_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="COCO evaluation of a model, or of an existing results file")
    p.add_argument("--annotations", type=Path, required=True, help="COCO-format ground truth (instances_*.json)")
    p.add_argument("--images", type=Path, help="folder of the dataset's images (to run a model)")
    p.add_argument("--results", type=Path, help="score this COCO results file instead of running a model")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder (default runs/eval)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (by id)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--backend", choices=("pycocotools", "faster-coco-eval"), default="pycocotools",
                   help="scoring implementation (default: the official pycocotools)")  # fmt: skip
    _add_model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a registry model (COCO or fine-tuned .pth) to ONNX or OpenVINO")
    p.add_argument("model", help="registry name, e.g. fasterrcnn_resnet50_fpn")
    p.add_argument("--weights", help="a .pth file, or 'random' (default: torchvision's COCO weights)")
    p.add_argument("--config", type=Path, help="YAML config (class_names, thresholds); flags override it")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx", help="onnx (default) or openvino")
    p.add_argument("--min-size", type=int, dest="min_size", help="shorter side the model resizes to (baked in)")
    p.add_argument("--max-size", type=int, dest="max_size", help="cap on the longer side (baked in)")
    p.add_argument("--score", type=float, dest="score_threshold", help="minimum score kept (baked in)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="precision to run it at (recorded in the sidecar)")
    p.add_argument("--out", type=Path, help="output file (.onnx or .xml) or folder (default exports/)")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("weights", help="list, download or verify the registry models' COCO weights")
    p.add_argument("action", choices=("list", "download", "verify"))
    p.add_argument("names", nargs="*", help="model names (default: all four)")
    p.set_defaults(func=cmd_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # torch's C++ deprecation notices (e.g. from int8 TorchScript models) are not the user's to fix;
    # this only takes effect when torch is not imported yet, as in the console script.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # OpenCV's and FFmpeg's own console chatter (e.g. "can't open camera by index") would bury our one-line errors.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # Library noise a user can do nothing about (raised inside torchvision/TorchScript models).
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
    if getattr(args, "offline", False):
        os.environ["DETECTOR_OFFLINE"] = "1"
    try:
        return int(args.func(args))
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
