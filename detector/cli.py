"""``detector run | eval | export | weights | cache`` -- the only place that configures logging."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from . import __distribution__, __version__
from .config import (
    CODECS,
    CONFIG_PRECISIONS,
    ENGINES,
    EXPORT_FORMATS,
    EXPORT_PRECISIONS,
    SERVE_TOKEN_ENV,
    DetectorConfig,
    load_config,
)
from .errors import DetectorError, Interrupted

if TYPE_CHECKING:
    from .eval.evaluator import EvalReport
    from .ray_run import RayOptions

log = logging.getLogger("detector")
FAST_PRESET = "fast_cpu"
"""The shipped preset ``--fast`` stands for: the fastest correct CPU setting measured here."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", help="YAML file or preset name (e.g. faster_rcnn_r50_fpn); flags override it")
    g.add_argument(
        "--model", help="registry name (default fasterrcnn_resnet50_fpn), d2go (shipped) or a TorchScript file"
    )
    g.add_argument(
        "--weights", help="a .pth file, or 'random' for untrained weights (default: torchvision's COCO weights)"
    )
    g.add_argument("--score", type=float, dest="score_threshold", help="minimum score to keep (default 0.5)")
    g.add_argument("--classes", help="keep only these classes, comma-separated names or ids, e.g. person,car")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument(
        "--precision",
        choices=CONFIG_PRECISIONS,
        help="inference precision (default fp32; auto: the fastest this CPU runs well, on OpenVINO)",
    )
    g.add_argument("--calibration", metavar="VIDEO|DIR", help="int8: video or image folder whose frames calibrate "
                   "the quantization (default: the shipped demo clip; eval: the dataset's images)")  # fmt: skip
    g.add_argument("--min-size", type=int, dest="min_size", help="shorter side the model resizes to")
    g.add_argument("--max-size", type=int, dest="max_size", help="cap on the longer side after resizing")
    g.add_argument("--offline", action="store_true", help="never download weights")
    g.add_argument("--engine", choices=ENGINES,
                   help="inference engine (default auto: torch, or the file's own for .xml/.onnx models); "
                   "openvino/onnxruntime export a registry model on first use into a cache")  # fmt: skip
    g.add_argument("--fast", action="store_true", help=f"use the fastest correct CPU preset ({FAST_PRESET})")
    g.add_argument("--compile", action="store_const", const=True, dest="compile",
                   help="torch engine: torch.compile the backbone + FPN (slow first frames; see README)")  # fmt: skip


FLAGS = {
    "model": "--model",
    "weights": "--weights",
    "score_threshold": "--score",
    "classes": "--classes",
    "device": "--device",
    "precision": "--precision",
    "min_size": "--min-size",
    "max_size": "--max-size",
    "engine": "--engine",
    "compile": "--compile",
    "calibration": "--calibration",
}


def _config_from(args: argparse.Namespace) -> DetectorConfig:
    if args.fast and args.config is not None:
        raise DetectorError("--fast is a config preset; give either --fast or --config")
    return load_config(FAST_PRESET if args.fast else args.config, {k: getattr(args, k) for k in FLAGS},
                       override_names=FLAGS)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    from .io.sources import open_source
    from .planning import DEFAULT_SOURCE, plan_outputs

    cfg = _config_from(args)
    for flag, value, least in (
        ("--max-frames", args.max_frames, 1),
        ("--stride", args.stride, 1),
        ("--start", args.start, 0),
        ("--max-viewers", args.max_viewers, 1),
        ("--batch-size", args.batch_size, 1),
        ("--detect-threads", args.detect_threads, 1),
        ("--render-procs", args.render_procs, 0),
    ):
        if value is not None and value < least:
            raise DetectorError(f"{flag} must be at least {least}, got {value}")
    if args.end is not None and args.end <= (args.start or 0):
        raise DetectorError(f"--end ({args.end}) must be greater than --start ({args.start or 0})")
    # Check input, outputs and views before the (slow) model load and before any output is
    # opened, so mistakes fail fast and a failed start leaves earlier outputs as they were.
    serve_token = args.serve_token if args.serve_token is not None else os.environ.get(SERVE_TOKEN_ENV) or None
    if args.serve_token is not None and args.serve is None:
        raise DetectorError("--serve-token applies to the live view; add --serve [HOST:]PORT")
    if args.serve is not None:
        from .io.browser import check_address, check_token, parse_address

        check_address(*parse_address(args.serve))
        check_token(serve_token)
    if args.show:
        from .io.window import check_gui

        check_gui()
    stats_path = Path(args.stats) if args.stats not in (None, "-") else None
    if args.render_procs and (args.serve is not None or args.show):
        raise DetectorError("--render-procs draws the output file in worker processes and cannot feed --serve or "
                            "--show; drop one of them")  # fmt: skip
    if args.render_procs and (args.ray is not None or args.sources is not None or len(args.source) > 1):
        raise DetectorError("--render-procs is for one input or a folder of videos; drop it for --ray, --sources "
                            "and several inputs")  # fmt: skip
    if args.decode == "nvdec" and (args.ray is not None or args.sources is not None or len(args.source) > 1):
        raise DetectorError("--decode nvdec is for one video or a folder of videos; drop it for --ray, --sources "
                            "and several inputs (they decode on the CPU)")  # fmt: skip
    if args.decode == "nvdec" and _run_gpu(cfg, "nvdec") is None:  # before the model loads or a folder is made
        raise DetectorError("--decode nvdec decodes on the GPU of a CUDA run and this run is on the CPU; "
                            "use --device cuda (and the torch engine) or --decode cpu")  # fmt: skip
    if args.ray is not None or args.workers is not None:
        return _run_ray(args, cfg, stats_path)  # its driver loads no torch: the workers do
    from .predictor import Detector
    from .runner import run

    if args.sources is not None or len(args.source) > 1:
        return _run_many(args, cfg, stats_path, serve_token)
    args.source = args.source[0] if args.source else None
    from .folder_run import many_inputs

    if many_inputs(args.source):  # a folder of videos, or any run under torchrun
        return _run_folder(args, cfg, stats_path)
    source = open_source(args.source if args.source is not None else DEFAULT_SOURCE,
                         stride=args.stride or 1, start=args.start or 0, end=args.end,
                         decode=args.decode, gpu=_run_gpu(cfg, args.decode))  # fmt: skip
    try:
        plan = plan_outputs(source, args.out, args.json, live_view=bool(args.serve or args.show), stats=stats_path,
                            codec=args.codec)  # fmt: skip
        detector = Detector.from_config(cfg, progress=not args.quiet)
    except BaseException:
        source.close()
        raise
    log.info("model %s on %s, %s %s; input %s", detector.name, detector.device, detector.engine.kind,
             detector.precision, source.info.path)  # fmt: skip
    before = {p: _file_state(p) for p in (plan.out, plan.json) if p is not None}
    try:
        result = run(detector, source, plan=plan, max_frames=args.max_frames, progress=not args.quiet,
                     serve=args.serve, serve_token=serve_token, max_viewers=args.max_viewers,
                     show=args.show, hud=args.hud, batch_size=args.batch_size, codec=args.codec,
                     detect_threads=args.detect_threads, render_procs=args.render_procs,
                     announce=None if args.quiet else print)  # fmt: skip
    except Interrupted as exc:
        exc.detail = _kept_after_stop(before, plan.json)
        raise
    fps = result.frames / result.seconds if result.seconds > 0 else 0.0
    print(f"{result.frames} frames, {result.detections} detections, {fps:.2f} frames/s")
    if result.out is not None:
        print(f"annotated: {result.out}")
    if result.json is not None:
        print(f"detections: {result.json}")
    if args.stats is not None:
        print(result.stats.table())
        if stats_path is not None:
            from .io.sinks import write_text_atomic

            write_text_atomic(stats_path, json.dumps(result.stats.summary(), indent=2) + "\n")
            print(f"stats: {stats_path}")
    return 0


def _run_gpu(cfg: DetectorConfig, decode: str) -> int | None:
    """The CUDA device index this run's model will use (for NVDEC decoding), None when not on CUDA: the
    torch engine (``auto`` is torch unless the model is an export or int8, OpenVINO's) on a CUDA device."""
    from .predictor import cuda_index, torch_engine

    return cuda_index(cfg.device) if decode != "cpu" and torch_engine(cfg) else None


def _run_many(args: argparse.Namespace, cfg: DetectorConfig, stats_path: Path | None, serve_token: str | None) -> int:
    """Several sources (``SRC1 SRC2 ...`` or ``--sources FILE``) through one model, outputs per source."""
    from .multi_run import check_entries, open_files, run_many, stats_summary, stats_table
    from .pipeline.names import parse_entry, read_sources_file
    from .planning import plan_multi_outputs
    from .predictor import Detector

    entries = [parse_entry(text, where="source") for text in args.source]
    if args.sources is not None:
        entries += read_sources_file(args.sources)
    check_entries(entries)
    if args.show:
        raise DetectorError("--show watches one source; several sources show in a browser grid: use --serve PORT")
    if args.batch_size is not None or args.detect_threads is not None:
        raise DetectorError("--batch-size and --detect-threads are for one file or folder; several sources are "
                            "batched across sources, one newest frame each")  # fmt: skip
    sources = [(e.name, e.spec, None if e.live else Path(e.spec).expanduser()) for e in entries]
    plan = plan_multi_outputs(sources, args.out, args.json, stats=stats_path, codec=args.codec,
                              live_view=args.serve is not None)  # fmt: skip
    opened = open_files(plan, stride=args.stride or 1, start=args.start or 0, end=args.end)
    try:
        detector = Detector.from_config(cfg, progress=not args.quiet)
    except BaseException:
        for got in opened.values():
            if not isinstance(got, str):
                got.close()
        raise
    log.info("model %s on %s, %s %s; %d sources", detector.name, detector.device, detector.engine.kind,
             detector.precision, len(entries))  # fmt: skip
    outputs = [p for item in plan.items for p in (item.out, item.json) if p is not None]
    before = {p: _file_state(p) for p in outputs}
    try:
        result = run_many(detector, plan, opened, max_frames=args.max_frames, hud=args.hud, codec=args.codec,
                          announce=None if args.quiet else print, serve=args.serve, serve_token=serve_token,
                          max_viewers=args.max_viewers)  # fmt: skip
    except Interrupted as exc:
        changed = [str(p) for p in outputs if _file_state(p) != before[p]]
        exc.detail = f"; the frames processed so far are in {', '.join(changed)}" if changed else (
            "; nothing was written")  # fmt: skip
        raise
    fps = result.frames / result.seconds if result.seconds > 0 else 0.0
    print(f"{result.frames} frames, {result.detections} detections, {fps:.2f} frames/s ({len(entries)} sources)")
    for source in result.sources:
        if source.frames == 0:
            print(f"{source.name}: no frame ({source.error or 'it never delivered one'})", file=sys.stderr)
            continue
        files = ", ".join(str(p) for p in (source.out, source.json) if p is not None)
        written = f" -> {files}" if files else ""  # a live source only watched (--serve) writes nothing
        print(f"{source.name}: {source.frames} frames, {source.detections} detections{written}")
    if args.stats is not None:
        print(stats_table(result))
        if stats_path is not None:
            from .io.sinks import write_text_atomic

            write_text_atomic(stats_path, json.dumps(stats_summary(result), indent=2) + "\n")
            print(f"stats: {stats_path}")
    return 0


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """What tells a file (or folder) apart from its replacement: inode, modification time, size."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _kept_after_stop(before: dict[Path, tuple[int, int, int] | None], jsonl: Path | None) -> str:
    """What a stopped run left, for its one line: outputs are finalised and renamed into place on a
    stop signal, so an output whose file changed holds the frames processed; one that did not is
    the earlier file (or none), untouched. The JSON Lines file counts the frames (one line each)."""
    changed = [p for p, state in before.items() if _file_state(p) != state]
    if not changed:
        kept = [str(p) for p, state in before.items() if state is not None]
        return "; nothing was written" + (f", {' and '.join(kept)} kept as they were" if kept else "")
    names = " and ".join(str(p) for p in changed)
    if jsonl in changed and jsonl is not None and jsonl.is_file():
        with jsonl.open("rb") as f:
            if not any(line.strip() for line in f):
                return f"; no frame was processed ({names} hold no frames)"
    return f"; the frames processed so far are in {names}"


def _run_ray(args: argparse.Namespace, cfg: DetectorConfig, stats_path: Path | None) -> int:
    """``detector run FOLDER|GLOB --ray [ADDRESS]`` (:mod:`detector.ray_run`); prints as a folder run does."""
    from .ray_run import RayOptions

    if args.ray is None:
        raise DetectorError("--workers is for --ray runs; add --ray, or drop --workers")
    address, sources = args.ray or None, list(args.source)
    if address is not None and ":" not in address and address not in ("auto", "local"):
        sources.insert(0, address)  # `detector run --ray FOLDER`: argparse gave the folder to --ray
        address = None
    if args.sources is not None or len(sources) != 1:
        raise DetectorError("--ray runs one folder or glob of images or videos; give exactly one")
    args.source = sources[0]
    return _run_folder(args, cfg, stats_path, ray=RayOptions(address, args.workers))


def _run_folder(
    args: argparse.Namespace, cfg: DetectorConfig, stats_path: Path | None, ray: RayOptions | None = None
) -> int:
    """``detector run`` on a folder of videos, under torchrun or on Ray (``ray``); rank 0 prints the closing lines."""
    from .distributed import PeerFailed
    from .folder_run import FolderOptions, run_folder
    from .planning import DEFAULT_SOURCE, FolderPlan
    from .ray_run import run_ray

    options = FolderOptions(out=args.out, json=args.json, stats=stats_path, keep_stats=args.stats is not None,
                            stride=args.stride or 1, start=args.start or 0, end=args.end,
                            max_frames=args.max_frames, hud=args.hud, batch_size=args.batch_size,
                            detect_threads=args.detect_threads, codec=args.codec, progress=not args.quiet,
                            watch=bool(args.serve is not None or args.show),
                            render_procs=args.render_procs, decode=args.decode)  # fmt: skip
    try:
        spec = args.source if args.source is not None else DEFAULT_SOURCE
        result = run_ray(cfg, spec, options, ray) if ray is not None else run_folder(cfg, spec, options)
    except PeerFailed:  # another process failed; rank 0 reports it
        return 2
    if result is None:  # not rank 0
        return 0
    fps = result.frames / result.seconds if result.seconds > 0 else 0.0
    where = [f"{result.processes} processes"] if result.processes > 1 else []
    if result.videos is not None:
        where = [f"{result.videos} videos", *([f"{len(result.skipped)} skipped"] if result.skipped else []), *where]
    print(f"{result.frames} frames, {result.detections} detections, {fps:.2f} frames/s"
          + (f" ({', '.join(where)})" if where else ""))  # fmt: skip
    plan = result.plan
    if isinstance(plan, FolderPlan):
        print(f"annotated: {plan.out}{os.sep} (one <name>.mp4 per video)")
        print(f"detections: {plan.out}{os.sep} (one <name>.jsonl per video)")
    else:
        if plan.outputs.out is not None:
            print(f"annotated: {plan.outputs.out}")
        if plan.outputs.json is not None:
            print(f"detections: {plan.outputs.json}")
    if result.stats is not None:
        print(result.stats.table())
        if result.stats_path is not None:
            from .io.sinks import write_text_atomic

            write_text_atomic(result.stats_path, json.dumps(result.stats.summary(), indent=2) + "\n")
            print(f"stats: {result.stats_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``detector export MODEL --format onnx|openvino``: a self-contained file plus its JSON sidecar."""
    from .engines.export import describe, export_from_config

    cfg = load_config(args.config, {"model": args.model, "weights": args.weights, "min_size": args.min_size,
                                    "max_size": args.max_size, "score_threshold": args.score_threshold,
                                    "precision": args.precision, "calibration": args.calibration})  # fmt: skip
    suffix = EXPORT_FORMATS[args.format]
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
            try:
                prefix = W.verify(local)
            except DetectorError as exc:  # report every file, not just the first bad one
                print(f"{name}: BAD: {exc}")
                status = 1
                continue
            print(f"{name}: ok, sha256 starts with {prefix} ({local})")
    if args.action == "list":
        dirs = ", ".join(str(d) for d in W.weights_dirs())
        print(f"searched: {dirs}, {W.hub_checkpoints_dir()}")
    return status


def cmd_cache(args: argparse.Namespace) -> int:
    """``detector cache list|clear``: the registry models exported on first use by --engine openvino|onnxruntime."""
    from datetime import datetime

    from .engines import cache

    where = cache.exports_dir()
    limit = cache.max_mb()
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"removed {removed} entries ({freed / cache.MB:.1f} MB) from {where}")
        return 0
    found = cache.entries()
    for e in found:
        used = datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        print(f"{e.path.name:52s} {e.model:28s} {e.format:9s} {e.precision:5s} {e.size_mb:8.1f} MB  last used {used}")
    total = sum(e.size for e in found) / cache.MB
    print(f"total: {len(found)} entries, {total:.1f} MB of the {limit:g} MB limit (${cache.MAX_MB_ENV}) in {where}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import CocoEvaluator, load_dataset
    from .eval.dataset import DatasetError
    from .eval.evaluator import EvalReport
    from .eval.report import check_out_dir
    from .eval.scoring import score_results_file

    if args.images is None and args.results is None:
        raise DatasetError("give --images DIR to run a model, or --results FILE.json to score existing detections")
    if args.results is not None and (args.images is not None or args.model is not None):
        given = " and ".join(f for f, v in (("--images", args.images), ("--model", args.model)) if v is not None)
        raise DatasetError(
            f"--results scores an existing file, so {given} would be ignored; "
            "give --results alone, or --images (with --model) to run a model"
        )
    if args.batch_size < 1:
        raise DatasetError(f"--batch-size must be at least 1, got {args.batch_size}")
    dataset = load_dataset(args.annotations, args.images if args.results is None else None, args.limit)
    check_out_dir(args.out, tuple(p for p in (args.annotations, args.results) if p is not None))
    if args.results is not None:
        scores = score_results_file(dataset.coco, args.results, dataset.image_ids, args.backend)
        report = EvalReport(scores, args.results.name, len(dataset))
        return _finish_eval(args, report, write_results=False)
    from .distributed import distributed_from_env
    from .models import MODELS
    from .predictor import Detector

    overrides: dict[str, object] = {}
    if args.score_threshold is None and args.config is None:
        # torchvision scores its COCO models at 0.05; a TorchScript model's own threshold stands
        overrides["score_threshold"] = 0.05 if (args.model or "fasterrcnn_resnet50_fpn") in MODELS else 0.0
    if args.precision == "int8" and args.calibration is None and args.images is not None:
        overrides["calibration"] = str(args.images)  # calibrate on the dataset's own images
    cfg = _config_from(args).replace(**overrides) if overrides else _config_from(args)
    with distributed_from_env(cfg) as (cfg, rank):
        detector = Detector.from_config(cfg, progress=not args.quiet)
        evaluator = CocoEvaluator(dataset, class_names=detector.class_names, backend=args.backend)
        report = evaluator.evaluate(detector, batch_size=args.batch_size, progress=not args.quiet)
        if rank != 0:
            return 0
        return _finish_eval(args, report, write_results=True)


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


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other error here: ``error: --codec must be one
    of auto, h264, mp4v, got 'vp9' (see detector run --help)`` and exit 2, instead of the usage block
    (``--help`` prints it in full). Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {plain_parse_error(message)} (see {self.prog} --help)\n")


_CHOICE = re.compile(r"argument (?P<arg>.+?): invalid choice: (?P<got>.*) \(choose from (?P<choices>.*)\)")
_VALUE = re.compile(r"argument (?P<arg>.+?): invalid (?P<type>int|float) value: (?P<got>.*)")


def plain_parse_error(message: str) -> str:
    """argparse's error text in the words of this CLI's own errors."""
    message = " ".join(message.split())
    m = _CHOICE.fullmatch(message)
    if m:
        choices = m["choices"].replace("'", "")
        if m["arg"] == "command":
            return f"unknown command {m['got']}; use one of {choices}"
        return f"{m['arg'].split('/')[-1]} must be one of {choices}, got {m['got']}"
    m = _VALUE.fullmatch(message)
    if m:
        kind = "an integer" if m["type"] == "int" else "a number"
        return f"{m['arg'].split('/')[-1]} must be {kind}, got {m['got']}"
    if message.startswith("argument "):
        arg, _, why = message[len("argument ") :].partition(": ")
        return f"{arg.split('/')[-1]} {why}" if why else message
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="detector", description="Real-time object detection with torchvision detectors.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    parser.add_argument("--version", action="version", version=f"{__distribution__} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    quiet = OneLineParser(add_help=False)  # -q also after the subcommand
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars or info logs")  # fmt: skip

    p = sub.add_parser(
        "run", parents=[quiet], help="detect on a camera, stream, video file, image, or folder of images or videos"
    )
    p.add_argument("source", nargs="*", help="camera index (0), stream URL, image, folder, glob or video (default: "
                   "demo clip); several cameras, streams and videos run through one model, with per-source outputs "
                   "(--out DIR: DIR/<name>.mp4 + .jsonl)")  # fmt: skip
    p.add_argument("--sources", type=Path, metavar="FILE",
                   help="several sources, one per line as [name=]source (# comments); outputs per source")  # fmt: skip
    p.add_argument("--out", type=Path, help="annotated output: a video/image file, or a folder for folders")
    p.add_argument("--json", type=Path, help="JSON Lines detections (default: next to --out)")
    p.add_argument("--codec", choices=CODECS, default="auto",
                   help="video --out .mp4/.m4v/.mov/.mkv: auto (default: H.264 when PyAV is installed, else mp4v), "
                   "h264 (or an error), mp4v (OpenCV's MPEG-4 part 2); .avi is always MJPG")  # fmt: skip
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="files and folders: frames per forward pass (default 1 on CPU, 8 on CUDA)")  # fmt: skip
    p.add_argument("--detect-threads", type=int, metavar="N",
                   help="files and folders: batches detected at once, each in a thread and CUDA stream of its "
                   "own (default 1; 2 kept an H100 busier with the Faster R-CNNs, +3-28%%)")  # fmt: skip
    p.add_argument("--render-procs", type=int, metavar="N", default=0,
                   help="annotated output of one input or a folder of videos: draw boxes in N worker processes "
                   "(default 0: a thread), for GPU runs where drawing would hold the model up")  # fmt: skip
    p.add_argument("--decode", choices=("auto", "cpu", "nvdec"), default="auto",
                   help="video files: auto (default: on the GPU's NVDEC in a CUDA run when it can decode the file, "
                   "else the CPU), cpu (OpenCV), nvdec (or an error); the frames are the same")  # fmt: skip
    p.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="browser live view (MJPEG over HTTP; a grid of tiles with several sources), bound to 127.0.0.1 by default",
    )
    p.add_argument("--serve-token", metavar="TOKEN",
                   help="access token for --serve (default: $DETECTOR_SERVE_TOKEN, else a random one, printed "
                        "in the URL, when bound beyond 127.0.0.1); 'none' for no token")  # fmt: skip
    p.add_argument("--max-viewers", type=int, default=32, metavar="N", help="--serve: concurrent streams (default 32)")
    p.add_argument("--show", action="store_true", help="show a window (needs GUI OpenCV; q or Esc stops)")
    p.add_argument("--hud", action="store_true", help="draw fps, latency, model and frame index on every frame")
    p.add_argument("--stride", type=int, help="video files: process every N-th frame")
    p.add_argument("--start", type=int, help="video files: first frame index")
    p.add_argument("--end", type=int, help="video files: stop before this frame index")
    p.add_argument("--stats", nargs="?", const="-", metavar="PATH",
                   help="print per-stage timings; with PATH also write them as JSON")  # fmt: skip
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="a folder or glob on Ray: a local Ray with this machine's cores, or the cluster at ADDRESS "
                   "(or $RAY_ADDRESS); needs the ray extra")  # fmt: skip
    p.add_argument("--workers", type=int, metavar="N",
                   help="--ray: model-holding workers (default: one per GPU, else one per CPU)")  # fmt: skip
    _add_model_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", parents=[quiet], help="COCO evaluation of a model, or of an existing results file")
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

    p = sub.add_parser(
        "export", parents=[quiet], help="export a registry model (COCO or fine-tuned .pth) to ONNX or OpenVINO"
    )
    p.add_argument("model", help="registry name, e.g. fasterrcnn_resnet50_fpn")
    p.add_argument("--weights", help="a .pth file, or 'random' (default: torchvision's COCO weights)")
    p.add_argument("--config", help="YAML file or preset name (class_names, thresholds); flags override it")
    p.add_argument("--format", choices=tuple(EXPORT_FORMATS), default="onnx", help="onnx (default) or openvino")
    p.add_argument("--min-size", type=int, dest="min_size", help="shorter side the model resizes to (baked in)")
    p.add_argument("--max-size", type=int, dest="max_size", help="cap on the longer side (baked in)")
    p.add_argument("--score", type=float, dest="score_threshold", help="minimum score kept (baked in)")
    p.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        help="precision to run it at (recorded in the sidecar); int8 quantizes it (--format openvino)",
    )
    p.add_argument(
        "--calibration",
        metavar="VIDEO|DIR",
        help="int8: video or image folder whose frames calibrate it (default: the shipped demo clip)",
    )
    p.add_argument("--out", type=Path, help="output file (.onnx or .xml) or folder (default exports/)")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("weights", parents=[quiet], help="list, download or verify the registry models' COCO weights")
    p.add_argument("action", choices=("list", "download", "verify"))
    p.add_argument("names", nargs="*", help="model names (default: all four)")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("cache", parents=[quiet],
                       help="list or clear the export cache of --engine openvino|onnxruntime")  # fmt: skip
    p.add_argument("action", choices=("list", "clear"))
    p.set_defaults(func=cmd_cache)
    return parser


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextlib.contextmanager
def _stop_signals_as_interrupts() -> Iterator[None]:
    """SIGINT, SIGTERM (timeout, docker stop, systemd, Kubernetes) and SIGHUP (a closed terminal)
    raise :class:`Interrupted` in the main thread, so every ``finally`` runs and outputs are
    finalised. Only the first one counts: a second signal while finishing up is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum, signal.Signals(signum).name)

    previous = {}
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
        with _stop_signals_as_interrupts():
            return int(args.func(args))
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted by {exc.name}{exc.detail}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
