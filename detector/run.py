"""``detector run``: detect on an image, a folder of images or a video file and
write an annotated copy plus a JSON Lines file (one line per frame)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import SinkError
from .io.sinks import VIDEO_FOURCC, ImageSink, JsonlSink, VideoFileSink, prepare_output
from .io.sources import Frame, ImageSource, VideoFileSource, open_source
from .models import Detector
from .pipeline import Stats, run_pipeline
from .render import annotate
from .structures import Detections

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = PROJECT_ROOT / "demo" / "vtest_excerpt.mp4"
DEFAULT_OUT_DIR = Path("runs")


@dataclass(frozen=True)
class RunResult:
    frames: int
    detections: int
    out: Path
    json: Path
    seconds: float
    stats: Stats


def plan_outputs(source: ImageSource | VideoFileSource, out: Path | None, json: Path | None) -> tuple[Path, Path]:
    """The annotated-media and JSON Lines paths (defaults under ./runs/), checked and with
    their folders created; raises ``SinkError`` for unusable paths or ones naming an input."""
    info = source.info
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
    if info.kind == "video" and out.suffix.lower() not in VIDEO_FOURCC:
        raise SinkError(f"cannot write video {out}: use one of {', '.join(VIDEO_FOURCC)} as the extension")
    return prepare_output(out, inputs), prepare_output(json, inputs)


def run(
    detector: Detector,
    source: str | Path | ImageSource | VideoFileSource = DEFAULT_SOURCE,
    *,
    out: Path | None = None,
    json: Path | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Run ``detector`` over a source (a spec or an opened source, which this closes)
    and write the annotated media and JSON Lines; decoding, detection and
    rendering+writing overlap (:func:`detector.pipeline.run_pipeline`)."""
    start = time.perf_counter()
    if not isinstance(source, (ImageSource, VideoFileSource)):
        source = open_source(source)
    with source:
        info = source.info
        out, json = plan_outputs(source, out, json)
        total = info.frame_count if max_frames is None else min(max_frames, info.frame_count or max_frames)
        with JsonlSink(json) as jsonl:
            media: VideoFileSink | ImageSink
            if info.kind == "video":
                assert info.width and info.height
                media = VideoFileSink(out, info.fps or 30.0, (info.width, info.height))
            else:
                media = ImageSink(out, folder=info.kind == "images")
            with media, tqdm(total=total, unit="frame", disable=not progress, leave=False) as bar:

                def render(frame: Frame, dets: Detections) -> None:
                    annotate(frame.image, dets, copy=False)

                def write(frame: Frame, dets: Detections) -> None:
                    if isinstance(media, VideoFileSink):
                        media.write(frame.image)
                    else:
                        media.write(frame.image, frame.name)
                    record: dict[str, Any] = {"frame": frame.index, "time": round(frame.timestamp, 6)}
                    if info.kind != "video":
                        record["image"] = frame.name
                    record["detections"] = dets.to_dict()
                    jsonl.write(record)
                    counts[0] += len(dets)
                    bar.update()

                counts = [0]
                stats = run_pipeline(islice(source, max_frames), detector, write, render=render)
    return RunResult(stats.frames, counts[0], out, json, time.perf_counter() - start, stats)
