"""``detector run``: detect on a file, folder, camera or stream; write an annotated
copy and JSON Lines, and/or show the result live in a window or a browser."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast, overload

from tqdm import tqdm

from .io.base import Closeable, enter_sinks
from .io.live import LiveSource
from .io.offthread import OffThreadSink
from .io.renderpool import RenderPool
from .io.sinks import ImageSink, JsonlSink, VideoFileSink
from .io.sources import ImageSource, VideoFileSource, open_source
from .io.types import Frame
from .pipeline import Stats, check_arguments, check_batch_memory, check_counts, run_pipeline, several_sources
from .planning import DEFAULT_SOURCE, AnySource, OutputPlan, plan_outputs
from .predictor import Detector, cuda_index
from .render import annotate
from .render.hud import Hud
from .structures import Detections

if TYPE_CHECKING:
    from .multi_run import MultiRunResult

SourceSpec = str | Path | int
"""One of several sources given to :func:`run`: a path, URL or camera index."""
Several = Sequence[SourceSpec] | Mapping[str, SourceSpec]
"""Several sources: a list (or tuple) of specs, or names mapped to specs (a ``str`` is one source)."""

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What ``run`` writes to: the annotated frame and its detections, once per frame, in order."""

    def write(self, frame: Frame, detections: Detections) -> object: ...


@dataclass(frozen=True)
class RunResult:
    frames: int
    detections: int
    out: Path | None
    json: Path | None
    seconds: float
    stats: Stats


class BrowserView(Closeable):
    """The browser live view as a sink: publishes each annotated frame with live stats."""

    def __init__(self, serve: str, title: str, *, token: str | None = None, max_viewers: int = 32) -> None:
        from .io.browser import BrowserSink, parse_address

        self.server = BrowserSink(*parse_address(serve), title=title, token=token, max_viewers=max_viewers)
        self.url = self.server.view_url
        """The page's address, with the access token when one is required (print it once)."""
        self._fps = Hud("")

    def write(self, frame: Frame, detections: Detections) -> None:
        latency = (time.perf_counter() - frame.captured_at) * 1000
        self.server.write(frame.image, {"frame": frame.index, "fps": self._fps.tick(), "latency_ms": latency,
                                        "detections": len(detections)})  # fmt: skip

    def close(self) -> None:
        self.server.close()


def open_sinks(
    stack: contextlib.ExitStack,
    source: AnySource,
    plan: OutputPlan,
    *,
    serve: str | None = None,
    show: bool = False,
    title: str = "detector",
    serve_token: str | None = None,
    max_viewers: int = 32,
    codec: str = "auto",
    announce: Callable[[str], object] | None = None,
    copy_frames: bool = False,
    render_procs: int = 0,
    hud: str | None = None,
) -> list[Sink]:
    """The sinks a plan and the view options ask for, entered on ``stack``. Views open first and
    files last, so a view that cannot start touches no file. The video's codec is told once in one
    line (``video: H.264 (libx264) -> runs/x.mp4``) to ``announce``, by default logged at INFO.
    ``copy_frames``: the encoder thread gets its own copy of each image (other sinks, written
    after it, may still draw on the frame). ``render_procs`` > 0 with an annotated output: the
    frames are drawn (with ``hud``, the model name, a status line) in that many worker processes
    and written in order by :class:`~detector.io.renderpool.RenderPool`; the caller does not draw."""
    info = source.info
    sinks: list[Sink] = []
    files: list[VideoFileSink | ImageSink | JsonlSink] = []
    if serve is not None:
        view = stack.enter_context(BrowserView(serve, title, token=serve_token, max_viewers=max_viewers))
        print(f"live view: {view.url}", flush=True)
        sinks.append(view)
    if show:
        from .io.window import WindowSink

        sinks.append(stack.enter_context(WindowSink(title)))
    if plan.out is not None:
        if info.kind in ("video", "camera", "stream"):
            assert info.width and info.height
            stride = source.stride if isinstance(source, VideoFileSource) else 1
            fps = (info.fps or 30.0) / stride  # a strided video keeps its duration
            timed = isinstance(source, LiveSource)  # a recording plays as long as it took
            video = VideoFileSink(plan.out, fps, (info.width, info.height), timed=timed, codec=codec)
            media: VideoFileSink | ImageSink = video
            line = f"video: {video.codec_info} -> {plan.out}"
            if announce is not None:
                announce(line)
            else:
                log.info("%s", line)
        else:
            media = ImageSink(plan.out, folder=info.kind == "images")
        stack.enter_context(media)
        files.append(media)
    if plan.json is not None:
        jsonl = JsonlSink(plan.json, with_image=info.kind in ("image", "images"))
        stack.enter_context(jsonl)
        files.append(jsonl)
    if files and render_procs and plan.out is not None:
        one_size = info.kind in ("video", "camera", "stream")  # a folder's images vary
        frame_bytes = info.width * info.height * 3 if one_size and info.width and info.height else None
        pool = RenderPool(*files, procs=render_procs, hud=hud, frame_bytes=frame_bytes)
        stack.push(pool.__exit__)
        sinks.append(pool)
    elif files:
        # Encoding runs in a thread of its own (OpenCV releases the GIL), on another core than
        # detection and drawing; the JSON line follows its frame there. Closed before the
        # files themselves, so they get every queued frame.
        encoder = OffThreadSink(*files, copy=copy_frames)
        stack.push(encoder.__exit__)
        sinks.append(encoder)
    return sinks


class _NoBar:
    """The progress bar of ``progress=False``: a disabled tqdm still starts its monitor thread."""

    def update(self, n: int = 1) -> None:
        pass


@overload
def run(  # type: ignore[overload-overlap]  # a str is a Sequence too: this one wins
    detector: Detector,
    source: str | Path | AnySource = ...,
    *,
    sinks: Sequence[Sink] | None = None,
    out: str | Path | None = None,
    json: str | Path | None = None,
    serve: str | None = None,
    serve_token: str | None = None,
    max_viewers: int = 32,
    show: bool = False,
    hud: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    plan: OutputPlan | None = None,
    batch_size: int | None = None,
    detect_threads: int | None = None,
    codec: str = "auto",
    announce: Callable[[str], object] | None = None,
    render_procs: int = 0,
    decode: str = "auto",
) -> RunResult: ...


@overload
def run(
    detector: Detector,
    source: Several,
    *,
    sinks: Sequence[Sink] | None = None,
    out: str | Path | None = None,
    json: str | Path | None = None,
    serve: str | None = None,
    serve_token: str | None = None,
    max_viewers: int = 32,
    show: bool = False,
    hud: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    plan: OutputPlan | None = None,
    batch_size: int | None = None,
    detect_threads: int | None = None,
    codec: str = "auto",
    announce: Callable[[str], object] | None = None,
    render_procs: int = 0,
    decode: str = "auto",
) -> MultiRunResult: ...


def run(
    detector: Detector,
    source: str | Path | AnySource | Several = DEFAULT_SOURCE,
    *,
    sinks: Sequence[Sink] | None = None,
    out: str | Path | None = None,
    json: str | Path | None = None,
    serve: str | None = None,
    serve_token: str | None = None,
    max_viewers: int = 32,
    show: bool = False,
    hud: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    plan: OutputPlan | None = None,
    batch_size: int | None = None,
    detect_threads: int | None = None,
    codec: str = "auto",
    announce: Callable[[str], object] | None = None,
    render_procs: int = 0,
    decode: str = "auto",
) -> RunResult | MultiRunResult:
    """Run ``detector`` over a source (a spec, or an opened source, which this closes) and hand
    every annotated frame and its detections to each sink, in order.

    Several sources -- a list of specs, or a dict of names to specs -- go through the model together
    (:func:`detector.multi_run.run_sources`: batched across sources, a stalled one never delays the others):
    ``out`` is then a folder (one ``<name>.mp4`` + ``<name>.jsonl`` each), ``serve`` shows a grid, ``sinks``
    get every source's frames (``frame.name`` is the source's name), and the result is a ``MultiRunResult``
    (per source: frames, detections, files, error; ``health`` per source).

    ``sinks`` are yours (anything with ``write(frame, detections)``; context managers are
    entered and exited here, and a ``close()`` of one that is not is called at the end, on
    success and on error). ``out``/``json`` (or a ``plan`` from :func:`plan_outputs`),
    ``serve`` (``[HOST:]PORT``, browser view) and ``show`` (a window) add the built-in sinks;
    with none of them and ``sinks`` not given, a file input writes to ./runs/ as the CLI does;
    ``sinks=[]`` means no sinks at all (detections and stats only, in the result).
    ``serve_token`` and ``max_viewers`` configure the browser view (see
    :class:`detector.io.browser.BrowserSink`). ``hud`` draws a status line on every frame.
    ``batch_size`` frames of a file or folder go through the model together (default
    :func:`detector.pipeline.default_batch_size`: 1 on CPU, 8 on CUDA); live sources are
    always detected one newest frame at a time. ``detect_threads`` batches are detected at
    once, each in a thread and CUDA stream of its own (default 1; see
    :data:`detector.pipeline.DEFAULT_DETECT_THREADS`).
    ``codec`` (``auto``, ``h264``, ``mp4v``) picks the video's codec (see
    :class:`~detector.io.sinks.VideoFileSink`); the one used is told in one line to ``announce``
    (e.g. ``print``), else logged at INFO on ``detector.runner`` (silent unless logging is set up).
    ``render_procs`` (one source writing an annotated file, no ``serve``/``show``/``sinks``): draw the
    frames in that many worker processes instead of the writer thread
    (:class:`~detector.io.renderpool.RenderPool`), for runs fast enough that drawing holds the GIL
    the model's thread needs; the files are those of a run without it.
    ``decode`` (``auto``, ``cpu``, ``nvdec``) says where a video file given as a path is decoded:
    ``auto`` on the GPU's NVDEC when ``detector`` runs on CUDA and NVDEC can decode the file, else on
    the CPU (see :mod:`detector.io.nvdec`; the frames are the same either way).
    Decoding, detection and rendering+writing
    overlap (:func:`detector.pipeline.run_pipeline`); files are renamed into place when
    finalised (see :mod:`detector.io.sinks`).
    """
    start = time.perf_counter()
    check_arguments("run", detector, source)
    out = Path(out) if out is not None else None  # a str is a path too
    json = Path(json) if json is not None else None
    if several_sources(source):
        from .multi_run import run_sources

        if render_procs:
            raise TypeError("render_procs is for one source")
        if json is not None or show or plan is not None or batch_size is not None or detect_threads is not None:
            raise TypeError("run() over several sources takes out (a folder), serve, sinks, hud, max_frames and "
                            "codec; json, show, plan, batch_size and detect_threads are for one source")  # fmt: skip
        return run_sources(detector, cast("Several", source), sinks=sinks, out=out, serve=serve,
                           serve_token=serve_token, max_viewers=max_viewers, hud=hud, max_frames=max_frames,
                           codec=codec, announce=announce)  # fmt: skip
    check_counts(batch_size=batch_size, detect_threads=detect_threads)  # before any output is opened
    if render_procs < 0:
        raise ValueError(f"render_procs must be 0 or more, got {render_procs}")
    if render_procs and (serve or show or sinks):
        raise ValueError("render_procs draws the output files in worker processes; it cannot feed serve, show "
                         "or sinks of yours: leave one out")  # fmt: skip
    defaults = sinks is None  # no sinks asked for: outputs in ./runs/, as the CLI writes them
    sinks = list(sinks or ())
    if not isinstance(source, (ImageSource, VideoFileSource, LiveSource)):
        source = open_source(source, decode=decode, gpu=cuda_index(detector.device))  # type: ignore[arg-type]
    with contextlib.ExitStack() as stack:
        stack.enter_context(source)
        info = source.info
        if batch_size is not None and batch_size > 1 and not source.live and info.width and info.height:
            check_batch_memory(detector, batch_size, info.width, info.height)  # before any output is opened
        if plan is None and (out is not None or json is not None or (defaults and not (serve or show))):
            plan = plan_outputs(source, out, json, live_view=bool(serve or show or sinks), codec=codec)
        title = f"detector: {detector.name}"
        all_sinks = open_sinks(stack, source, plan or OutputPlan(None, None), serve=serve, show=show, title=title,
                               serve_token=serve_token, max_viewers=max_viewers, codec=codec,
                               announce=announce, copy_frames=bool(sinks), render_procs=render_procs,
                               hud=detector.name if hud else None)  # fmt: skip
        all_sinks.extend(enter_sinks(stack, sinks))
        planned = source.planned_frames if isinstance(source, VideoFileSource) else info.frame_count
        total = None if source.live else (planned if max_frames is None else min(max_frames, planned or max_frames))
        bar = stack.enter_context(tqdm(total=total, unit="frame", leave=False)) if progress else _NoBar()
        status = Hud(detector.name)
        detections = 0

        def render(frame: Frame, dets: Detections) -> None:
            annotate(frame.image, dets, copy=False)
            if hud:
                status.tick()
                status.draw(frame.image, frame.index, (time.perf_counter() - frame.captured_at) * 1000)

        def write(frame: Frame, dets: Detections) -> None:
            nonlocal detections
            for sink in all_sinks:
                sink.write(frame, dets)
            detections += len(dets)
            bar.update()

        pumps = [s.pump for s in all_sinks if getattr(s, "main_thread_pump", False)]  # type: ignore[attr-defined]

        def on_main_thread() -> None:
            for pump in pumps:
                pump()

        pooled = any(isinstance(s, RenderPool) for s in all_sinks)  # it draws: the writer thread does not
        stats = run_pipeline(source, detector, write, render=None if pooled else render, max_frames=max_frames,
                             on_main_thread=on_main_thread if pumps else None,
                             batch_size=batch_size, detect_threads=detect_threads)  # fmt: skip
        inner = [f for s in all_sinks for f in (s.sinks if isinstance(s, (OffThreadSink, RenderPool)) else (s,))]
        files = {type(s): s.path for s in inner if isinstance(s, (VideoFileSink, ImageSink, JsonlSink))}
    media = files.get(VideoFileSink, files.get(ImageSink))
    return RunResult(stats.frames, detections, media, files.get(JsonlSink), time.perf_counter() - start, stats)
