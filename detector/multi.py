"""``detector run`` over many inputs: a folder (or glob) of videos, and -- under ``torchrun`` --
a folder of images or videos shared between several processes, GPUs or machines.

- **A folder of videos** runs each video in turn, sorted by name, and writes ``<name>.mp4``
  and ``<name>.jsonl`` per video into one folder: ``runs/<folder>/`` (``runs/<folder>-2/``
  and so on rather than replacing an earlier run) or ``--out DIR``. Each file follows the
  rules of :mod:`detector.io.sinks`; an undecodable video is skipped with a warning, as an
  undecodable image of a folder is. A folder holding both images and videos is refused,
  with a glob of one kind as the fix.
- **Under torchrun** (``WORLD_SIZE`` > 1) process ``rank`` takes inputs ``[rank::world]``:
  the videos of a folder of videos, or the images of a folder of images. Rank 0 lists the
  inputs and plans the outputs (so every process uses the same, once-numbered names) and
  shares the plan; each process writes its own videos or annotated images. For images, each
  process also writes its JSON lines to a part file beside the ``.jsonl``; rank 0 gathers
  the lines over the process group and writes the one ``.jsonl`` in single-process order,
  then the parts are removed. The outputs are those of a single-process run.
- **Errors.** Every step ends with every process telling the others how it went, so an
  error on one process ends the run on all of them at that step (the others finish the
  share they are working on first): rank 0 prints one line and every process exits 2. A
  process that dies outright (killed, crashed) is torchrun's to notice: it stops the others
  with SIGTERM, and they finalise what they wrote, as on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from .config import DetectorConfig
from .distributed import distributed_from_env, env_world_size, world
from .errors import DetectorError, Interrupted, SinkError, SourceError
from .io.sinks import VIDEO_FOURCC, _finalise, partial_path, prepare_output, write_text_atomic
from .io.sources import GLOB_CHARS, IMAGE_EXTS, STREAM_SCHEMES, ImageSource, glob_base, image_names, open_source
from .io.types import Frame
from .pipeline import Stats
from .predictor import Detector
from .runner import DEFAULT_OUT_DIR, DEFAULT_SOURCE, OutputPlan, RunResult, plan_outputs, run

log = logging.getLogger(__name__)
T = TypeVar("T")

VIDEO_EXTS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".m2ts", ".3gp"}
)
"""File endings taken as videos in a folder or glob (any file OpenCV decodes runs when named on its own)."""
WAIT = timedelta(hours=24)
"""How long a process waits at a step for the slowest one (e.g. the one with the longest video)."""


@dataclass(frozen=True)
class VideoFolder:
    """The videos of a folder or glob, sorted, and each one's name relative to it (sub-folders kept)."""

    origin: Path
    paths: list[Path]
    names: list[str]
    folder_name: str
    """What ``runs/<folder_name>/`` is called: the folder (for a glob, the one before its first wildcard)."""


def find_videos(spec: str | Path | None) -> VideoFolder | None:
    """The videos of a folder or glob; None when ``spec`` is neither or holds no video.
    Raises ``SourceError`` when it holds both images and videos."""
    if spec is None:
        return None
    text = str(spec)
    path = Path(text).expanduser()
    base: Path | None
    if any(c in text for c in GLOB_CHARS) and not path.exists():
        base = folder = glob_base(str(path))
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    elif path.is_dir():
        base, folder, found = None, path, sorted(path.iterdir())
    else:
        return None
    videos = [p for p in found if p.suffix.lower() in VIDEO_EXTS and p.is_file()]
    if not videos:
        return None
    images = [p for p in found if p.suffix.lower() in IMAGE_EXTS]
    if images:
        one, other = f"*{images[0].suffix}", f"*{videos[0].suffix}"
        fix = (
            f"run each kind on its own: detector run '{path / one}', then '{path / other}'"
            if base is None
            else f"give a glob of one kind, e.g. ending in {one} or {other}"
        )
        raise SourceError(f"{text} holds both images ({len(images)}) and videos ({len(videos)}); {fix}")
    name = folder.resolve().name.strip("*?[]") or "videos"
    return VideoFolder(path, videos, image_names(videos, base), name)


@dataclass(frozen=True)
class FolderPlan:
    """Where a folder of videos goes: ``items`` are (video, annotated copy, JSON Lines), in input order."""

    out: Path
    items: list[tuple[Path, Path, Path]]
    stats: Path | None = None


def _free_folder(path: Path) -> Path:
    """``path``, or the first ``path-N`` that does not exist: a default never replaces an earlier run."""
    for n in range(1, 100_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if not candidate.exists():
            return candidate
    raise SinkError(f"{path.parent} holds too many earlier outputs named {path.name}-N; clean it or pass --out")


def plan_video_outputs(
    videos: VideoFolder, out: Path | None, json_path: Path | None, stats: Path | None = None
) -> FolderPlan:
    """The output folder and files of a folder of videos, checked, with their folders created,
    under the rules of :func:`detector.runner.plan_outputs`; nothing is written yet."""
    if json_path is not None:
        raise SinkError(
            f"--json {json_path} names one file, but a folder of videos gets one <name>.jsonl per video, "
            "beside its annotated copy; drop --json (--out DIR picks the folder)"
        )
    if out is not None and (out.suffix.lower() in VIDEO_FOURCC or (out.exists() and not out.is_dir())):
        raise SinkError(f"--out {out} is a file; a folder of videos is written to a folder: give --out a folder")
    if out is None:
        out = _free_folder(DEFAULT_OUT_DIR / videos.folder_name)
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
    inputs = {p.resolve(): p for p in videos.paths}
    outputs = [p for _, media, jsonl in items for p in (media, jsonl)]
    if stats is not None and stats.resolve() in {p.resolve() for p in outputs}:
        raise SinkError(f"--stats {stats} is the same file as a video's output; give it its own path")
    for path in [*outputs, *([stats] if stats is not None else [])]:
        hit = inputs.get(path.resolve())
        if hit is not None:
            raise SinkError(f"output {path} would overwrite the input {hit}; choose another --out folder")
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


class ImageShare(ImageSource):
    """Images ``[rank::world]`` of a list. Frames keep their index in the whole list, so JSON
    lines and file names are those of a single-process run."""

    def __init__(self, paths: list[Path], origin: Path, base: Path | None, rank: int, world: int) -> None:
        super().__init__(paths[rank::world], origin, "images", base)
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[Frame]:
        for frame in super().__iter__():
            yield dataclasses.replace(frame, index=self.rank + self.world * frame.index)


@dataclass
class Outcome:
    """What one process did, sent to rank 0 at the end."""

    frames: int = 0
    detections: int = 0
    videos: int = 0
    skipped: list[str] = field(default_factory=list)
    stats: list[Stats] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    """Image folders: this process's JSON lines, for rank 0 to merge."""
    error: str | None = None

    def add(self, result: RunResult, *, keep_stats: bool) -> None:
        self.frames += result.frames
        self.detections += result.detections
        if keep_stats:
            self.stats.append(result.stats)


class _PeerFailed(Exception):  # noqa: N818 (not an error of this process)
    """Another process failed; rank 0 reports it, this one exits 2 without a word."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, DetectorError):
        return str(exc)
    log.exception("unexpected error")  # the traceback, on the process where it happened
    return f"{type(exc).__name__}: {exc}"


class Group:
    """Collectives over the process group, or their one-process equivalents."""

    def __init__(self) -> None:
        self.rank, self.size = world()

    def all(self, value: T) -> list[T]:
        if self.size == 1:
            return [value]
        got: list[Any] = [None] * self.size
        dist.all_gather_object(got, value)
        return got

    def to_rank0(self, value: T) -> list[T]:
        """Every process's ``value`` on rank 0; ``[]`` elsewhere."""
        if self.size == 1:
            return [value]
        got: list[Any] | None = [None] * self.size if self.rank == 0 else None
        dist.gather_object(value, got, dst=0)
        return got or []

    def from_rank0(self, value: T) -> T:
        if self.size == 1:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def by_rank0(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every process its result; when it fails, it fails on
        every process (rank 0 raises the error, the others :class:`_PeerFailed`)."""
        if self.size == 1:
            return fn()
        value, error = None, None
        if self.rank == 0:
            try:
                value = fn()
            except Exception as exc:
                error = _describe(exc)
        value, error = self.from_rank0((value, error))
        if error is not None:
            if self.rank == 0:
                raise DetectorError(error)
            raise _PeerFailed
        return value  # type: ignore[return-value]

    def step(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` here, then agree: when it failed on any process, it fails on every one."""
        if self.size == 1:
            return fn()
        value, error = None, None
        try:
            value = fn()
        except Exception as exc:
            error = _describe(exc)
        self.fail_if(self.all(error))
        return value  # type: ignore[return-value]

    def fail_if(self, errors: list[str | None]) -> None:
        """Raise on every process when any entry (one per process) is an error: rank 0 the
        error, the others :class:`_PeerFailed`."""
        message = one_line(errors)
        if message is None:
            return
        if self.rank != 0:
            raise _PeerFailed
        raise DetectorError(message)


def one_line(errors: list[str | None]) -> str | None:
    """The line that reports the processes' errors (one entry per process), or None."""
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    rank, first = failed[0]
    if len(errors) == 1 or (len(failed) == len(errors) and len({e for _, e in failed}) == 1):
        return first  # one process, or the same error everywhere
    more = f" (and {len(failed) - 1} more process(es) failed; see their messages above)" if len(failed) > 1 else ""
    return f"process {rank} of {len(errors)}: {first}{more}"


def many_inputs(spec: str | None) -> bool:
    """Whether ``detector run SPEC`` is this module's: a folder or glob of videos, or any run
    under torchrun. Raises ``SourceError`` for a folder of both images and videos."""
    return env_world_size() > 1 or find_videos(spec) is not None


def run_many(args: argparse.Namespace, cfg: DetectorConfig, stats_path: Path | None) -> int:
    """``detector run`` for a folder of videos, or under torchrun (see the module docstring)."""
    spec = args.source if args.source is not None else DEFAULT_SOURCE
    with distributed_from_env(cfg, timeout=WAIT) as (cfg, rank):
        if rank != 0:  # one voice: rank 0 reports progress; every process still warns
            logging.getLogger("detector").setLevel(logging.WARNING)
        try:
            return _run_many(args, cfg, Group(), spec, stats_path)
        except _PeerFailed:
            return 2


def _plan(args: argparse.Namespace, spec: str | Path, stats_path: Path | None) -> FolderPlan | ImagePlan:
    """Rank 0's listing and output plan, shared with the others."""
    if args.serve is not None or args.show:
        raise DetectorError(
            "--serve and --show watch one input, but a folder of videos or a torchrun run writes files only; "
            "drop them, or run one video at a time to watch it"
        )
    videos = find_videos(spec)
    if videos is not None:
        return plan_video_outputs(videos, args.out, args.json, stats_path)
    text = str(spec)
    path = Path(text).expanduser()
    if not text.isdigit() and not text.lower().startswith(STREAM_SCHEMES):
        if path.is_dir() or (any(c in text for c in GLOB_CHARS) and not path.exists()):
            with open_source(text) as source:
                assert isinstance(source, ImageSource)
                outputs = plan_outputs(source, args.out, args.json, stats=stats_path)
                return ImagePlan(source.paths, Path(source.info.path), source.base, outputs)
    raise SourceError(
        f"torchrun shares the images or videos of a folder or glob between processes, and {text} is one input; "
        "run it without torchrun"
    )


def _part(json_path: Path, rank: int) -> Path:
    """Where a process writes its JSON lines of an image folder until rank 0 merges them."""
    return json_path.with_name(f"{json_path.stem}.part{rank}-{os.getpid()}{json_path.suffix}")


def _run_many(
    args: argparse.Namespace, cfg: DetectorConfig, group: Group, spec: str | Path, stats_path: Path | None
) -> int:
    plan = group.by_rank0(lambda: _plan(args, spec, stats_path))
    progress = not args.quiet and group.rank == 0
    detector = group.step(lambda: Detector.from_config(cfg, progress=progress))
    log.info("model %s on %s (%s); %d process(es)", detector.name, detector.device, detector.precision, group.size)
    start = time.perf_counter()
    part = _part(plan.outputs.json, group.rank) if isinstance(plan, ImagePlan) and plan.outputs.json else None
    try:
        if isinstance(plan, FolderPlan):
            outcome = _run_videos(detector, plan, args, group, progress)
        else:
            outcome = _run_images(detector, plan, part, args, group, progress)
    except Interrupted as exc:
        if isinstance(plan, FolderPlan):
            exc.detail = f"; the frames processed so far are in {plan.out}"
        else:
            kept = [str(p) for p in (plan.outputs.out, part) if p is not None]
            exc.detail = f"; the frames processed so far are in {' and '.join(kept)}"
        raise
    outcomes = group.to_rank0(outcome)
    final: tuple[str | None, bool] = (None, True)
    if group.rank == 0:
        try:
            final = _finish(plan, outcomes)
        except Exception as exc:  # the others wait for this answer: always send one
            final = (_describe(exc), False)
    error, merged = group.from_rank0(final)
    if merged and part is not None:
        part.unlink(missing_ok=True)
    if error is not None:
        if group.rank == 0:
            raise DetectorError(error)
        raise _PeerFailed
    if group.rank == 0:
        _report(args, plan, outcomes, time.perf_counter() - start, group.size)
    return 0


def _run_videos(
    detector: Detector, plan: FolderPlan, args: argparse.Namespace, group: Group, progress: bool
) -> Outcome:
    """This process's videos, one after the other; stops at the first error (an undecodable video
    is skipped with a warning)."""
    outcome = Outcome()
    try:
        for video, media, jsonl in plan.items[group.rank :: group.size]:
            try:
                source = open_source(video, stride=args.stride or 1, start=args.start or 0, end=args.end)
            except SourceError as exc:
                log.warning("skipping %s: %s", video, exc)
                outcome.skipped.append(str(video))
                continue
            try:
                outputs = plan_outputs(source, media, jsonl, codec=args.codec)
            except BaseException:
                source.close()
                raise
            log.info("%s -> %s", video, media)
            result = run(detector, source, plan=outputs, max_frames=args.max_frames, progress=progress, hud=args.hud,
                         batch_size=args.batch_size, detect_threads=args.detect_threads,
                         codec=args.codec)  # fmt: skip
            outcome.add(result, keep_stats=args.stats is not None)
            outcome.videos += 1
    except Exception as exc:
        if group.size == 1:
            raise
        outcome.error = _describe(exc)
    return outcome


def _run_images(
    detector: Detector, plan: ImagePlan, part: Path | None, args: argparse.Namespace, group: Group, progress: bool
) -> Outcome:
    """This process's images, written to the shared folder, its JSON lines to ``part``."""
    outcome = Outcome()
    paths = plan.paths[: args.max_frames] if args.max_frames else plan.paths
    try:
        if paths[group.rank :: group.size]:
            if part is not None:
                prepare_output(part)
            source = ImageShare(paths, plan.origin, plan.base, group.rank, group.size)
            result = run(detector, source, plan=OutputPlan(plan.outputs.out, part), progress=progress, hud=args.hud,
                         batch_size=args.batch_size, detect_threads=args.detect_threads)  # fmt: skip
            outcome.add(result, keep_stats=args.stats is not None)
    except Exception as exc:
        outcome.error = _describe(exc)
    if part is not None and part.exists():
        text = part.read_text(encoding="utf-8")
        outcome.lines = [line for line in text.splitlines(keepends=True) if line.endswith("\n")]
    return outcome


def _finish(plan: FolderPlan | ImagePlan, outcomes: list[Outcome]) -> tuple[str | None, bool]:
    """Rank 0: merge the JSON lines of an image folder (also after an error: the frames done are
    kept, as in one process). Returns (the error to report, whether the merge was written)."""
    error = one_line([o.error for o in outcomes])
    if not isinstance(plan, ImagePlan) or plan.outputs.json is None:
        return error, True
    target = plan.outputs.json
    lines = sorted((line for o in outcomes for line in o.lines), key=lambda line: json.loads(line)["frame"])
    tmp = partial_path(target)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(lines)
        _finalise(tmp, target, failed=error is not None, written=len(lines))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        parts = f"{target.stem}.part*{target.suffix}"
        return f"cannot write {target} ({exc.strerror}); each process's lines are kept in {parts} beside it", False
    return error, True


def _report(
    args: argparse.Namespace, plan: FolderPlan | ImagePlan, outcomes: list[Outcome], seconds: float, size: int
) -> None:
    """Rank 0: the closing lines, as ``detector run`` prints them for one input."""
    frames = sum(o.frames for o in outcomes)
    detections = sum(o.detections for o in outcomes)
    fps = frames / seconds if seconds > 0 else 0.0
    where = [f"{size} processes"] if size > 1 else []
    if isinstance(plan, FolderPlan):
        skipped = [s for o in outcomes for s in o.skipped]
        videos = sum(o.videos for o in outcomes)
        where = [f"{videos} videos", *([f"{len(skipped)} skipped"] if skipped else []), *where]
    print(f"{frames} frames, {detections} detections, {fps:.2f} frames/s" + (f" ({', '.join(where)})" if where else ""))
    if isinstance(plan, FolderPlan):
        print(f"annotated: {plan.out}{os.sep} (one <name>.mp4 per video)")
        print(f"detections: {plan.out}{os.sep} (one <name>.jsonl per video)")
        stats_path = plan.stats
    else:
        if plan.outputs.out is not None:
            print(f"annotated: {plan.outputs.out}")
        if plan.outputs.json is not None:
            print(f"detections: {plan.outputs.json}")
        stats_path = plan.outputs.stats
    if args.stats is not None:
        stats = merge_stats([s for o in outcomes for s in o.stats], seconds)
        print(stats.table())
        if stats_path is not None:
            write_text_atomic(stats_path, json.dumps(stats.summary(), indent=2) + "\n")
            print(f"stats: {stats_path}")


def merge_stats(parts: list[Stats], seconds: float) -> Stats:
    """One table for several runs: every frame's timings; ``seconds`` of wall time in all."""
    total = Stats(frames=sum(s.frames for s in parts), seconds=seconds)
    for s in parts:
        for stage, values in s.stages.items():
            total.stages.setdefault(stage, []).extend(values)
        total.latency_ms.extend(s.latency_ms)
    return total
