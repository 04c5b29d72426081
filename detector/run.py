"""``detector run``: detect on a file, folder, camera or stream; write an annotated
copy and JSON Lines, and/or show the result live in a window or a browser."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def plan_outputs(
    source: AnySource, out: Path | None, json: Path | None, *, live_view: bool = False
) -> tuple[Path | None, Path | None]:
    """The annotated-media and JSON Lines paths, checked and with their folders created.

    Files default to ./runs/ for file inputs. A live source writes only what
    is asked for, and needs at least one of --out, --json, --show or --serve.
    Raises ``SinkError`` for unusable paths or ones naming an input.
    """
    info = source.info
    if out is not None and info.kind in ("video", "camera", "stream") and out.suffix.lower() not in VIDEO_FOURCC:
        raise SinkError(f"cannot write video {out}: use one of {', '.join(VIDEO_FOURCC)} as the extension")
    if isinstance(source, LiveSource):
        if out is None and json is None and not live_view:
            raise SinkError(f"live {info.kind} {source.name}: nothing to do; add --serve 8080, --show, --out or --json")
        return (prepare_output(out) if out else None), (prepare_output(json) if json else None)
    assert isinstance(info.path, Path)
    if out is None:
        if info.kind == "video":
            out = DEFAULT_OUT_DIR / f"{info.path.stem}.mp4"
        elif info.kind == "image":
            out = DEFAULT_OUT_DIR / info.path.name
        else:
            out = DEFAULT_OUT_DIR / (info.path.name.strip("*?[]") or "images")
    if json is None:
        json = out.with_suffix(".jsonl") if out.suffix else out.with_name(out.name + ".jsonl")
    inputs = tuple(source.paths) if isinstance(source, ImageSource) else (info.path,)
    return prepare_output(out, inputs), prepare_output(json, inputs)


def run(
    detector: Detector,
    source: str | Path | AnySource = DEFAULT_SOURCE,
    *,
    out: Path | None = None,
    json: Path | None = None,
    max_frames: int | None = None,
    progress: bool = True,
    serve: str | None = None,
    show: bool = False,
    hud: bool = False,
) -> RunResult:
    """Run ``detector`` over a source (a spec, or an opened source, which this closes).

    Decoding, detection and rendering+writing overlap
    (:func:`detector.pipeline.run_pipeline`). ``serve`` (``[HOST:]PORT``) adds the
    browser view, ``show`` a window, ``hud`` a status line on every frame.
    """
    start = time.perf_counter()
    if not isinstance(source, (ImageSource, VideoFileSource, LiveSource)):
        source = open_source(source)
    with contextlib.ExitStack() as stack:
        stack.enter_context(source)
        info = source.info
        out, json = plan_outputs(source, out, json, live_view=bool(serve or show))
        writers: list[Any] = []
        jsonl = stack.enter_context(JsonlSink(json)) if json else None
        if out is not None:
            if info.kind in ("video", "camera", "stream"):
                assert info.width and info.height
                writers.append(stack.enter_context(VideoFileSink(out, info.fps or 30.0, (info.width, info.height))))
            else:
                writers.append(stack.enter_context(ImageSink(out, folder=info.kind == "images")))
        browser = None
        if serve is not None:
            from .io.browser import BrowserSink, parse_address

            browser = stack.enter_context(BrowserSink(*parse_address(serve), title=f"detector: {detector.name}"))
            print(f"live view: {browser.url}", flush=True)
        window = None
        if show:
            from .io.window import WindowSink

            window = stack.enter_context(WindowSink(f"detector: {detector.name}"))
        live = isinstance(source, LiveSource)
        total = (
            None
            if live
            else (info.frame_count if max_frames is None else min(max_frames, info.frame_count or max_frames))
        )
        bar = stack.enter_context(tqdm(total=total, unit="frame", disable=not progress, leave=False))
        status = Hud(detector.name)
        counts = [0]

        def render(frame: Frame, dets: Detections) -> None:
            annotate(frame.image, dets, copy=False)
            status.tick()
            if hud:
                status.draw(frame.image, frame.index, (time.perf_counter() - frame.captured_at) * 1000)

        def write(frame: Frame, dets: Detections) -> None:
            for writer in writers:
                if isinstance(writer, VideoFileSink):
                    writer.write(frame.image)
                else:
                    writer.write(frame.image, frame.name)
            if jsonl is not None:
                record: dict[str, Any] = {"frame": frame.index, "time": round(frame.timestamp, 6)}
                if info.kind in ("image", "images"):
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
    return RunResult(stats.frames, counts[0], out, json, time.perf_counter() - start, stats)
