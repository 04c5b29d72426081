"""``detector run``: detect on a file, folder, camera or stream; write an annotated
copy and JSON Lines, and/or show the result live in a window or a browser."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from .errors import SinkError
from .io.live import LiveSource
from .io.sinks import VIDEO_FOURCC, ImageSink, JsonlSink, VideoFileSink, prepare_output
from .io.sources import Frame, ImageSource, VideoFileSource, open_source
from .models import Detector
from .pipeline import Stats, run_pipeline
from .render import annotate
from .render.hud import Hud
from .structures import Detections

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = PROJECT_ROOT / "demo" / "vtest_excerpt.mp4"
DEFAULT_OUT_DIR = Path("runs")
AnySource = ImageSource | VideoFileSource | LiveSource


@dataclass(frozen=True)
class RunResult:
    frames: int
    detections: int
    out: Path | None
    json: Path | None
    seconds: float
    stats: Stats


@dataclass(frozen=True)
class OutputPlan:
    """Where a run writes: annotated media (a file or, for image folders, a folder), JSON Lines, stats."""

    out: Path | None
    json: Path | None
    stats: Path | None = None


def _json_beside(out: Path) -> Path:
    return out.with_suffix(".jsonl") if out.suffix else out.with_name(out.name + ".jsonl")


def _numbered(path: Path, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")


def _default_media(source: AnySource) -> Path:
    info = source.info
    assert isinstance(info.path, Path)
    if info.kind == "video":
        return DEFAULT_OUT_DIR / f"{info.path.stem}.mp4"
    if info.kind == "image":
        return DEFAULT_OUT_DIR / info.path.name
    base = source.base if isinstance(source, ImageSource) else None
    name = base.resolve().name if base is not None else info.path.resolve().name
    return DEFAULT_OUT_DIR / (name.strip("*?[]") or "images")


def _free_defaults(out: Path, json: Path | None) -> tuple[Path, Path]:
    """``runs/x.mp4`` + ``runs/x.jsonl``, or the first ``runs/x-N.*`` pair of which neither exists,
    so default outputs never overwrite each other or an earlier run's (``json``: the user's, kept)."""
    for n in range(1, 100_000):
        media = _numbered(out, n)
        jsonl = json or _json_beside(media)
        if not media.exists() and not (json is None and jsonl.exists()):
            return media, jsonl
    raise SinkError(f"{out.parent} holds too many earlier outputs named {out.stem}-N; clean it or pass --out")


def _media_files(source: AnySource, out: Path) -> list[Path]:
    """Every file the annotated output will consist of."""
    if isinstance(source, ImageSource) and source.info.kind == "images":
        return [out / name for name in source.names]
    return [out]


def _check_image_out(out: Path) -> None:
    if not cv2.haveImageWriter(str(out)):
        raise SinkError(f"cannot write an image as {out.name}: give --out an image extension such as .jpg or .png")


def plan_outputs(
    source: AnySource,
    out: Path | None,
    json: Path | None,
    *,
    live_view: bool = False,
    stats: Path | None = None,
) -> OutputPlan:
    """The output paths, checked, with their folders created; nothing is written yet.

    Files default to ./runs/ for file inputs, numbered (``x-2.mp4``) rather than
    overwriting anything. A live source writes only what is asked for, and needs
    at least one of --out, --json, --show or --serve. Raises ``SinkError`` for
    unusable paths, two outputs naming one file, or any output naming an input.
    """
    info = source.info
    video_like = info.kind in ("video", "camera", "stream")
    if out is not None and video_like and out.suffix.lower() not in VIDEO_FOURCC:
        raise SinkError(f"cannot write video {out}: use one of {', '.join(VIDEO_FOURCC)} as the extension")
    if out is not None and info.kind == "image":
        _check_image_out(out)
    if isinstance(source, LiveSource):
        if out is None and json is None and not live_view:
            raise SinkError(f"live {info.kind} {source.name}: nothing to do; add --serve 8080, --show, --out or --json")
        inputs: tuple[Path, ...] = ()
    else:
        if out is None:
            out, json = _free_defaults(_default_media(source), json)
        elif json is None:
            json = _json_beside(out)
        inputs = tuple(source.paths) if isinstance(source, ImageSource) else (Path(info.path),)
    named: dict[Path, str] = {}
    for what, path in (("--out", out), ("--json", json), ("--stats", stats)):
        if path is None:
            continue
        key = path.resolve()
        if key in named:
            raise SinkError(f"{what} {path} is the same file as {named[key]}; give each output its own path")
        named[key] = f"{what} {path}"
    resolved_inputs = {p.resolve(): p for p in inputs}
    for path in [*(_media_files(source, out) if out is not None else []), *(p for p in (json, stats) if p)]:
        hit = resolved_inputs.get(path.resolve())
        if hit is not None:
            raise SinkError(f"output {path} would overwrite the input {hit}; choose another --out/--json path")
    if json is not None:
        prepare_output(json)
    if stats is not None:
        prepare_output(stats)
    if out is not None:
        if info.kind == "images":
            if out.exists() and not out.is_dir():
                raise SinkError(f"--out {out} is a file; image folders are written to a folder")
        else:
            prepare_output(out)
    return OutputPlan(out, json, stats)


def run(
    detector: Detector,
    source: str | Path | AnySource = DEFAULT_SOURCE,
    *,
    out: Path | None = None,
    json: Path | None = None,
    max_frames: int | None = None,
    progress: bool = True,
    serve: str | None = None,
    serve_token: str | None = None,
    max_viewers: int = 32,
    show: bool = False,
    hud: bool = False,
    plan: OutputPlan | None = None,
) -> RunResult:
    """Run ``detector`` over a source (a spec, or an opened source, which this closes).

    Decoding, detection and rendering+writing overlap
    (:func:`detector.pipeline.run_pipeline`). ``serve`` (``[HOST:]PORT``) adds the
    browser view (``serve_token``, ``max_viewers``: see :class:`detector.io.browser.BrowserSink`),
    ``show`` a window, ``hud`` a status line on every frame.
    ``plan`` (from :func:`plan_outputs`) replaces ``out``/``json``.
    Views open first and files last, so a view that cannot start touches no file;
    files are renamed into place when finalised (see :mod:`detector.io.sinks`).
    """
    start = time.perf_counter()
    if not isinstance(source, (ImageSource, VideoFileSource, LiveSource)):
        source = open_source(source)
    with contextlib.ExitStack() as stack:
        stack.enter_context(source)
        info = source.info
        live = isinstance(source, LiveSource)
        if plan is None:
            plan = plan_outputs(source, out, json, live_view=bool(serve or show))
        browser = None
        if serve is not None:
            from .io.browser import BrowserSink, parse_address

            browser = stack.enter_context(BrowserSink(*parse_address(serve), title=f"detector: {detector.name}",
                                                      token=serve_token, max_viewers=max_viewers))  # fmt: skip
            print(f"live view: {browser.view_url}", flush=True)
        window = None
        if show:
            from .io.window import WindowSink

            window = stack.enter_context(WindowSink(f"detector: {detector.name}"))
        video = images = None
        if plan.out is not None:
            if info.kind in ("video", "camera", "stream"):
                assert info.width and info.height
                stride = source.stride if isinstance(source, VideoFileSource) else 1
                fps = (info.fps or 30.0) / stride  # a strided video keeps its duration
                video = stack.enter_context(VideoFileSink(plan.out, fps, (info.width, info.height), timed=live))
            else:
                images = stack.enter_context(ImageSink(plan.out, folder=info.kind == "images"))
        jsonl = stack.enter_context(JsonlSink(plan.json)) if plan.json else None
        planned = source.planned_frames if isinstance(source, VideoFileSource) else info.frame_count
        total = None if live else (planned if max_frames is None else min(max_frames, planned or max_frames))
        bar = stack.enter_context(tqdm(total=total, unit="frame", disable=not progress, leave=False))
        status = Hud(detector.name)
        counts = [0]
        with_image = info.kind in ("image", "images")

        def render(frame: Frame, dets: Detections) -> None:
            annotate(frame.image, dets, copy=False)
            status.tick()
            if hud:
                status.draw(frame.image, frame.index, (time.perf_counter() - frame.captured_at) * 1000)

        def write(frame: Frame, dets: Detections) -> None:
            if video is not None:
                video.write(frame.image, frame.timestamp)
            if images is not None:
                images.write(frame.image, frame.name)
            if jsonl is not None:
                record: dict[str, Any] = {"frame": frame.index, "time": round(frame.timestamp, 6)}
                if with_image:
                    record["image"] = frame.name
                record["detections"] = dets.to_dict()
                jsonl.write(record)
            if browser is not None:
                latency = (time.perf_counter() - frame.captured_at) * 1000
                browser.write(frame.image, {"frame": frame.index, "fps": status.fps, "latency_ms": latency,
                                            "detections": len(dets)})  # fmt: skip
            if window is not None:
                window.write(frame.image)
            counts[0] += len(dets)
            bar.update()

        stats = run_pipeline(source, detector, write, render=render, max_frames=max_frames)
    return RunResult(stats.frames, counts[0], video.path if video else plan.out, jsonl.path if jsonl else plan.json,
                     time.perf_counter() - start, stats)  # fmt: skip
