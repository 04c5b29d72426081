"""Where a run writes, decided once before any work: free names, checked paths, inputs never outputs.

One set of rules for ``detector run`` on one input (:func:`plan_outputs`) and on a folder of
videos (:func:`plan_video_outputs`): default outputs go to ``./runs/`` under free (numbered)
names; no two outputs share a file; no output is an input; an existing output is replaced only
by one of its kind (:func:`detector.io.sinks.prepare_output`); folders are created now, so an
unwritable one fails before the model loads. Nothing is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2

from .errors import SinkError
from .io.live import LiveSource
from .io.sinks import VIDEO_FOURCC, check_video_codec, prepare_output
from .io.sources import ImageSource, VideoFileSource
from .io.videos import VideoFolder
from .resources import DEMO_CLIP

DEFAULT_SOURCE = DEMO_CLIP
DEFAULT_OUT_DIR = Path("runs")
AnySource = ImageSource | VideoFileSource | LiveSource


@dataclass(frozen=True)
class OutputPlan:
    """Where a run writes: annotated media (a file or, for image folders, a folder), JSON Lines, stats."""

    out: Path | None
    json: Path | None
    stats: Path | None = None


def free_name(path: Path, taken: Callable[[Path], bool] = Path.exists, *, folder: bool = False) -> Path:
    """``path``, or the first ``<stem>-N<suffix>`` (a ``folder``: ``<name>-N``) for which ``taken`` is
    false: a default output never replaces an earlier run's."""
    stem, suffix = (path.name, "") if folder else (path.stem, path.suffix)
    for n in range(1, 100_000):
        candidate = path if n == 1 else path.with_name(f"{stem}-{n}{suffix}")
        if not taken(candidate):
            return candidate
    raise SinkError(f"{path.parent} holds too many earlier outputs named {path.stem}-N; clean it or pass --out")


def refuse_inputs(outputs: Iterable[Path], inputs: Iterable[Path], fix: str) -> None:
    """Raise if any output is an input (by resolved path)."""
    resolved = {p.resolve(): p for p in inputs}
    for path in outputs:
        hit = resolved.get(path.resolve())
        if hit is not None:
            raise SinkError(f"output {path} would overwrite the input {hit}; {fix}")


def refuse_shared(named: Iterable[tuple[str, Path | None]]) -> None:
    """Raise if two outputs name one file; ``named``: (what, path) pairs, ``None`` paths skipped."""
    seen: dict[Path, str] = {}
    for what, path in named:
        if path is None:
            continue
        key = path.resolve()
        if key in seen:
            raise SinkError(f"{what} {path} is the same file as {seen[key]}; give each output its own path")
        seen[key] = f"{what} {path}"


def _json_beside(out: Path) -> Path:
    return out.with_suffix(".jsonl") if out.suffix else out.with_name(out.name + ".jsonl")


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
    media = free_name(out, lambda m: m.exists() or (json is None and _json_beside(m).exists()))
    return media, json or _json_beside(media)


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
    codec: str = "auto",
) -> OutputPlan:
    """The output paths, checked, with their folders created; nothing is written yet.

    Files default to ./runs/ for file inputs, numbered (``x-2.mp4``) rather than
    overwriting anything. A live source writes only what is asked for, and needs
    at least one of --out, --json, --show or --serve. Raises ``SinkError`` for
    unusable paths, two outputs naming one file, any output naming an input, or a video
    ``codec`` that cannot be written (see :class:`~detector.io.sinks.VideoFileSink`).
    """
    info = source.info
    video_like = info.kind in ("video", "camera", "stream")
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
    if out is not None and video_like:
        check_video_codec(out, codec)
    refuse_shared((("--out", out), ("--json", json), ("--stats", stats)))
    refuse_inputs(_media_files(source, out) if out is not None else [], inputs, "choose another --out path")
    refuse_inputs([json] if json is not None else [], inputs, "choose another --json path")
    refuse_inputs([stats] if stats is not None else [], inputs, "choose another --stats path")
    if json is not None:
        prepare_output(json, kind="jsonl")
    if stats is not None:
        prepare_output(stats, kind="stats")
    if out is not None:
        if info.kind == "images":
            if out.exists() and not out.is_dir():
                raise SinkError(f"--out {out} is a file; image folders are written to a folder")
        else:
            prepare_output(out, kind="image" if info.kind == "image" else "video")
    return OutputPlan(out, json, stats)


@dataclass(frozen=True)
class FolderPlan:
    """Where a folder of videos goes: ``items`` are (video, annotated copy, JSON Lines), in input order."""

    out: Path
    items: list[tuple[Path, Path, Path]]
    stats: Path | None = None


def plan_video_outputs(
    videos: VideoFolder, out: Path | None, json_path: Path | None, stats: Path | None = None
) -> FolderPlan:
    """The output folder and files of a folder of videos, checked, with their folders created,
    under the rules of :func:`plan_outputs`; nothing is written yet."""
    if json_path is not None:
        raise SinkError(
            f"--json {json_path} names one file, but a folder of videos gets one <name>.jsonl per video, "
            "beside its annotated copy; drop --json (--out DIR picks the folder)"
        )
    if out is not None and (out.suffix.lower() in VIDEO_FOURCC or (out.exists() and not out.is_dir())):
        raise SinkError(f"--out {out} is a file; a folder of videos is written to a folder: give --out a folder")
    if out is None:
        out = free_name(DEFAULT_OUT_DIR / videos.folder_name, folder=True)
    items: list[tuple[Path, Path, Path]] = []
    taken: dict[str, Path] = {}
    for video, name in zip(videos.paths, videos.names, strict=True):
        stem = name[: len(name) - len(Path(name).suffix)]
        if stem in taken:
            raise SinkError(
                f"{taken[stem]} and {video} would both be written as {stem}.mp4; rename one or run them apart"
            )
        taken[stem] = video
        items.append((video, out / f"{stem}.mp4", out / f"{stem}.jsonl"))
    outputs = [p for _, media, jsonl in items for p in (media, jsonl)]
    refuse_shared([("--stats", stats), *(("a video's output", p) for p in outputs)])
    refuse_inputs(outputs, videos.paths, "choose another --out folder")
    refuse_inputs([stats] if stats is not None else [], videos.paths, "choose another --stats path")
    for _, media, jsonl in items:
        prepare_output(media, kind="video")
        prepare_output(jsonl, kind="jsonl")
    if stats is not None:
        prepare_output(stats, kind="stats")
    return FolderPlan(out, items, stats)


@dataclass(frozen=True)
class ImagePlan:
    """A folder of images shared between processes: the whole list, and the single-process outputs."""

    paths: list[Path]
    origin: Path
    base: Path | None
    outputs: OutputPlan


@dataclass(frozen=True)
class SourceOutputs:
    """One source of a multi-source run: its name, its input file (None: a camera or stream) and outputs."""

    name: str
    spec: str
    input: Path | None
    out: Path | None
    json: Path | None


@dataclass(frozen=True)
class MultiPlan:
    """Where a run of several sources writes: ``items`` in the order the sources were given."""

    items: list[SourceOutputs]
    stats: Path | None = None


def plan_multi_outputs(
    sources: list[tuple[str, str, Path | None]],
    out: Path | None,
    json_path: Path | None,
    *,
    stats: Path | None = None,
    codec: str = "auto",
    live_view: bool = False,
    write_defaults: bool = True,
) -> MultiPlan:
    """The outputs of several sources ``(name, spec, input file or None for a live one)``, checked,
    with their folders created, under the rules of :func:`plan_outputs`; nothing is written yet.

    With ``out`` (a folder): ``out/<name>.mp4`` and ``out/<name>.jsonl`` per source. Without it, a
    file source writes ``runs/<name>.mp4`` + ``.jsonl`` under free (numbered) names; a live source
    writes only what is asked, so it needs ``out`` or a ``live_view`` (then it writes nothing).
    ``write_defaults=False`` (the API given sinks of its own): without ``out``, nothing is written.
    Names must be distinct (the caller's to check)."""
    if json_path is not None:
        raise SinkError(
            f"--json {json_path} names one file, but several sources get one <name>.jsonl each, "
            "beside its annotated copy; drop --json (--out DIR picks the folder)"
        )
    if out is not None and (out.suffix.lower() in VIDEO_FOURCC or (out.exists() and not out.is_dir())):
        raise SinkError(f"--out {out} is a file; several sources are written to a folder: give --out a folder")
    items: list[SourceOutputs] = []
    for name, spec, path in sources:
        if out is not None:
            media, jsonl = out / f"{name}.mp4", out / f"{name}.jsonl"
        elif path is None or not write_defaults:
            if not live_view and write_defaults:
                raise SinkError(
                    f"live source {name}: nothing to do; add --out DIR (one <name>.mp4 + .jsonl per source) "
                    "or --serve PORT (a browser grid)"
                )
            items.append(SourceOutputs(name, spec, path, None, None))
            continue
        else:
            media, jsonl = _free_defaults(DEFAULT_OUT_DIR / f"{name}.mp4", None)
        items.append(SourceOutputs(name, spec, path, media, jsonl))
    outputs = [p for item in items for p in (item.out, item.json) if p is not None]
    inputs = [item.input for item in items if item.input is not None]
    if outputs:
        check_video_codec(items[0].out or outputs[0], codec)
    refuse_shared([("--stats", stats), *(("a source's output", p) for p in outputs)])
    refuse_inputs(outputs, inputs, "choose another --out folder")
    refuse_inputs([stats] if stats is not None else [], inputs, "choose another --stats path")
    for item in items:
        if item.out is not None:
            prepare_output(item.out, kind="video")
        if item.json is not None:
            prepare_output(item.json, kind="jsonl")
    if stats is not None:
        prepare_output(stats, kind="stats")
    return MultiPlan(items, stats)
