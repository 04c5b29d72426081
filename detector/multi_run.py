"""``detector run SRC1 SRC2 ...`` and ``detector run --sources FILE``: several cameras, streams and
video files through one model (:func:`~detector.pipeline.multi.multi_stream`, cross-stream
batching), with one annotated video and one JSON Lines file per source.

Each source's files open when its first frame arrives (size and rate from
``MultiStream.info(name)``); drawing, writing and (with ``serve``) JPEG-encoding for the browser
grid run in a thread per source (:class:`~detector.io.offthread.OffThreadSink`), so a slow sink
never slows detection. The grid's per-source state (connecting, running, reconnecting, ended,
failed), rates, drops, frame age and last error come from ``MultiStream.health()``, refreshed a few
times a second whether frames come or not, so a stalled tile says so. Outputs
are planned once, before any work (:func:`detector.planning.plan_multi_outputs`), and finalised
and renamed into place on any end, a stop signal included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DetectorError, SourceError
from .io.base import enter_sinks
from .io.offthread import OffThreadSink
from .io.sinks import JsonlSink, VideoFileSink
from .io.sources import GLOB_CHARS, IMAGE_EXTS, VideoFileSource, open_source
from .io.types import Frame
from .pipeline.multi import multi_stream
from .pipeline.names import SourceEntry, check_names, parse_entry
from .planning import MultiPlan, plan_multi_outputs
from .predictor import Detector
from .render import annotate
from .render.hud import Hud
from .structures import Detections

log = logging.getLogger(__name__)

GIVE_UP_S = 10.0
"""With ``--max-frames``: once every other source is done, a camera or stream that never delivered
a frame is given up on this many seconds after the start (without it, live sources run until stopped)."""


def check_entries(entries: list[SourceEntry]) -> None:
    """Refuse, in one line, names that clash and sources that must run alone (folders, globs, images)."""
    check_names(entries)
    for entry in entries:
        if entry.live:
            continue
        path = Path(entry.spec).expanduser()
        if path.is_dir() or (any(c in entry.spec for c in GLOB_CHARS) and not path.exists()):
            raise DetectorError(f"{entry.spec} is a folder or glob; run it alone (detector run {entry.spec})")
        if path.suffix.lower() in IMAGE_EXTS:
            raise DetectorError(f"{entry.spec} is an image; run it alone (detector run {entry.spec})")


class _Capped:
    """An opened video file for ``multi_stream``: at most ``limit`` frames, then its end."""

    live = False
    dropped = 0

    def __init__(self, source: Any, limit: int | None) -> None:
        self.source, self.limit, self.info = source, limit, source.info
        self.handed = 0
        """Frames handed to the stream so far: a file is done once all of them were written."""

    def __iter__(self) -> Iterator[Frame]:
        frames = iter(self.source)
        for frame in frames if self.limit is None else itertools.islice(frames, self.limit):
            self.handed += 1
            yield frame

    def close(self) -> None:
        self.source.close()


class _Render:
    """Draws the detections (and the status line) on the frame, in the source's writer thread."""

    def __init__(self, hud: Hud | None) -> None:
        self.hud = hud

    def write(self, frame: Frame, detections: Detections) -> None:
        annotate(frame.image, detections, copy=False)
        if self.hud is not None:
            self.hud.tick()
            self.hud.draw(frame.image, frame.index, (time.perf_counter() - frame.captured_at) * 1000)


class _Tile:
    """Publishes a source's annotated frames to its tile of the browser grid."""

    def __init__(self, view: Any, name: str) -> None:
        self.view, self.name = view, name

    def write(self, frame: Frame, detections: Detections) -> None:
        latency = (time.perf_counter() - frame.captured_at) * 1000
        self.view.write(frame.image, {"frame": frame.index, "latency_ms": round(latency, 1),
                                      "detections": len(detections)}, self.name)  # fmt: skip


def _open_view(
    stack: contextlib.ExitStack,
    plan: MultiPlan,
    title: str,
    serve: str | None,
    token: str | None,
    max_viewers: int,
) -> Any:
    """The browser grid (a tile per source of ``plan``), or None without ``serve``; closed with ``stack``."""
    if serve is None:
        return None
    from .io.browser import BrowserSink, parse_address

    names = [item.name for item in plan.items]
    view = stack.enter_context(BrowserSink(*parse_address(serve), title=f"detector: {title}", token=token,
                                           max_viewers=max_viewers, sources=names))  # fmt: skip
    print(f"live view: {view.view_url}", flush=True)  # even with -q: the address (and token) to open
    return view


class _Forward:
    """Hands a copy of a source's annotated frame, named after the source, to the user's sinks' thread."""

    def __init__(self, user: OffThreadSink, name: str) -> None:
        self.user, self.name = user, name

    def write(self, frame: Frame, detections: Detections) -> None:
        self.user.write(dataclasses.replace(frame, image=frame.image.copy(), name=self.name), detections)


def _open_user_sinks(stack: contextlib.ExitStack, sinks: Sequence[Any]) -> OffThreadSink | None:
    """The API's own sinks, entered (context managers) or closed at the end (``close()``), behind one thread."""
    if not sinks:
        return None
    writer = OffThreadSink(*enter_sinks(stack, sinks), name="detector-user-sinks")
    stack.push(writer.__exit__)
    return writer


def run_sources(
    detector: Detector,
    sources: Mapping[str, str | Path | int] | Sequence[str | Path | int],
    *,
    sinks: Sequence[Any] | None = None,
    out: Path | None = None,
    serve: str | None = None,
    serve_token: str | None = None,
    max_viewers: int = 32,
    hud: bool = False,
    max_frames: int | None = None,
    codec: str = "auto",
    announce: Callable[[str], object] | None = None,
) -> MultiRunResult:
    """:func:`detector.run` over several sources: ``sources`` maps names to specs (a path, URL or camera
    index), or lists specs (named as the CLI names them). With ``out`` (a folder), one video and one
    JSON Lines file per source; without it, file sources write to ./runs/ unless ``sinks`` are given."""
    if isinstance(sources, Mapping):
        entries = [SourceEntry(str(name), str(spec), given=True) for name, spec in sources.items()]
    else:
        entries = [parse_entry(str(spec), where="source") for spec in sources]
    if not entries:
        raise DetectorError("no sources given")
    check_entries(entries)
    named = [(e.name, e.spec, None if e.live else Path(e.spec).expanduser()) for e in entries]
    plan = plan_multi_outputs(named, out, None, codec=codec, live_view=serve is not None or sinks is not None,
                              write_defaults=sinks is None)  # fmt: skip
    return run_many(detector, plan, open_files(plan), max_frames=max_frames, hud=hud, codec=codec, announce=announce,
                    serve=serve, serve_token=serve_token, max_viewers=max_viewers, sinks=sinks or ())  # fmt: skip


class _SourceJsonl(JsonlSink):
    """A JSON Lines file whose every line says which source it is: ``{"source": name, "frame", ...}``."""

    def __init__(self, path: Path, source: str) -> None:
        super().__init__(path)
        self.source = source

    def write(self, frame: Frame, detections: Detections) -> None:
        self.write_record({"source": self.source, "frame": frame.index, "time": round(frame.timestamp, 6),
                           "detections": detections.to_dict()})  # fmt: skip


@dataclass
class SourceResult:
    name: str
    frames: int = 0
    detections: int = 0
    out: Path | None = None
    json: Path | None = None
    error: str | None = None
    """Why the source never ran (it could not be opened), else None."""


@dataclass
class MultiRunResult:
    sources: list[SourceResult]
    seconds: float
    health: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sources)

    @property
    def detections(self) -> int:
        return sum(s.detections for s in self.sources)


def open_files(plan: MultiPlan, *, stride: int = 1, start: int = 0, end: int | None = None) -> dict[str, Any]:
    """Open each video file source now (quick); one that cannot be opened is reported and left out,
    as an error string, so the others still run."""
    opened: dict[str, Any] = {}
    for item in plan.items:
        if item.input is None:
            continue
        try:
            source = open_source(item.spec, stride=stride, start=start, end=end)
        except SourceError as exc:
            opened[item.name] = str(exc).splitlines()[0]
            continue
        if not isinstance(source, VideoFileSource):
            source.close()
            opened[item.name] = f"{item.spec} is not a video file; run it alone"
            continue
        opened[item.name] = source
    return opened


def run_many(
    detector: Detector,
    plan: MultiPlan,
    opened: dict[str, Any],
    *,
    max_frames: int | None = None,
    hud: bool = False,
    codec: str = "auto",
    announce: Callable[[str], object] | None = None,
    serve: str | None = None,
    serve_token: str | None = None,
    max_viewers: int = 32,
    sinks: Sequence[Any] = (),
) -> MultiRunResult:
    """Detect on every source of ``plan`` through one model; files in ``opened`` (from
    :func:`open_files`: a source, or why it could not be opened) are closed here. ``serve``
    (``[HOST:]PORT``) shows every source in a browser grid (see :class:`~detector.io.browser.BrowserSink`).
    ``sinks`` (yours: ``write(frame, detections)``) get every source's annotated frames, one thread for
    all of them behind a queue of 8 frames, each frame a copy whose ``name`` is its source's name; sinks
    slower than the sources hold detection up, as a single source's sinks do."""
    start = time.perf_counter()
    results = {item.name: SourceResult(item.name) for item in plan.items}
    specs: dict[str, Any] = {}
    for item in plan.items:
        got = opened.get(item.name) if item.input is not None else item.spec
        if isinstance(got, str) and item.input is not None:
            results[item.name].error = got
            log.warning("%s: %s; the other sources go on", item.name, got)
            continue
        specs[item.name] = _Capped(got, max_frames) if item.input is not None else got
    if not specs:
        raise SourceError("no source could be opened (" + "; ".join(f"{r.name}: {r.error}" for r in results.values())
                          + ")")  # fmt: skip
    items = {item.name: item for item in plan.items}
    live = {name for name in specs if items[name].input is None}
    writers: dict[str, OffThreadSink] = {}
    health: dict[str, dict[str, Any]] = {}
    try:
        with contextlib.ExitStack() as stack:
            view = _open_view(stack, plan, detector.name, serve, serve_token, max_viewers)
            if view is not None:
                for name, result in results.items():
                    if result.error is not None:
                        view.update({"state": "failed", "last_error": result.error}, name)
            user = _open_user_sinks(stack, sinks)
            stream = stack.enter_context(multi_stream(detector, specs))

            def done(name: str, states: dict[str, dict[str, Any]], now: float) -> bool:
                count = results[name].frames
                if max_frames is not None and count >= max_frames:
                    return True
                state = states[name]["state"]
                if name not in live:  # its last frames may still be on their way: done once all are written
                    return state in ("ended", "failed") and count >= specs[name].handed
                return max_frames is not None and count == 0 and now - start >= GIVE_UP_S

            def all_done() -> bool:
                states, now = stream.health(), time.perf_counter()
                return all(done(name, states, now) for name in specs)

            finished = threading.Event()

            def watch() -> None:  # refreshes the grid's health; ends a run blocked on a source that never comes
                while not finished.wait(0.2):
                    if view is not None:
                        for name, state in stream.health().items():
                            view.update(state, name)
                    if max_frames is not None and all_done():
                        stream.close()
                        return

            watchdog = threading.Thread(target=watch, name="detector-multi-watch", daemon=True)
            watchdog.start()
            stack.callback(watchdog.join)
            stack.callback(finished.set)

            def open_writer(name: str) -> OffThreadSink:
                info = stream.info(name)
                item = items[name]
                assert info is not None and info.width and info.height
                writes: list[Any] = [_Render(Hud(detector.name) if hud else None)]
                if item.out is not None:
                    stride = getattr(getattr(specs[name], "source", None), "stride", 1)
                    fps = (info.fps or 30.0) / max(1, stride)  # a strided video keeps its duration
                    video = VideoFileSink(item.out, fps, (info.width, info.height), timed=name in live, codec=codec)
                    (announce or log.info)(f"video: {video.codec_info} -> {item.out}")
                    stack.enter_context(video)
                    writes.append(video)
                if view is not None:
                    writes.append(_Tile(view, name))
                if user is not None:
                    writes.append(_Forward(user, name))
                if item.json is not None:
                    writes.append(stack.enter_context(_SourceJsonl(item.json, name)))
                writer = OffThreadSink(*writes, name=f"detector-encode-{name}")
                stack.push(writer.__exit__)
                return writer

            for name, frame, dets in stream:
                result = results[name]
                if max_frames is None or result.frames < max_frames:
                    writer = writers.get(name)
                    if writer is None:
                        writer = writers[name] = open_writer(name)
                    writer.write(frame, dets)
                    result.frames += 1
                    result.detections += len(dets)
                if max_frames is not None and result.frames >= max_frames and all_done():
                    break
            health = stream.health()
    finally:
        for got in opened.values():
            if not isinstance(got, str):
                with contextlib.suppress(Exception):
                    got.close()
    for name, writer in writers.items():
        files = {type(s): s.path for s in writer.sinks if hasattr(s, "path")}
        results[name].out = files.get(VideoFileSink)
        results[name].json = files.get(_SourceJsonl)
    for name, state in health.items():
        if results[name].frames == 0 and state.get("last_error") and results[name].error is None:
            results[name].error = state["last_error"]
    return MultiRunResult([results[item.name] for item in plan.items], time.perf_counter() - start, health)


def stats_table(result: MultiRunResult) -> str:
    """One row per source: state, frames, detections, rates, drops, age, reconnects, last error."""
    head = f"{'source':<20} {'state':<12} {'frames':>7} {'dets':>7} {'fps':>6} {'dropped':>7} {'age p50/p95 ms':>15} "
    rows = [head + f"{'reconn':>6}  last error"]
    for source in result.sources:
        h = result.health.get(source.name, {})
        age = h.get("age_ms") or {}
        ages = f"{age.get('p50', '-')}/{age.get('p95', '-')}" if age else "-"
        state = h.get("state", "not run")
        rows.append(f"{source.name:<20} {state:<12} {source.frames:>7} {source.detections:>7} "
                    f"{h.get('fps', 0.0):>6} {h.get('dropped', 0):>7} {ages:>15} {h.get('reconnects', 0):>6}  "
                    f"{source.error or h.get('last_error') or ''}")  # fmt: skip
    return "\n".join(rows)


def stats_summary(result: MultiRunResult) -> dict[str, Any]:
    return {
        "seconds": round(result.seconds, 3),
        "sources": {
            s.name: {**result.health.get(s.name, {}), "detections": s.detections, "error": s.error}
            for s in result.sources
        },
    }
