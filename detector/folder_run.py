"""``detector run`` over many inputs (:func:`run_folder`): a folder (or glob) of videos, and --
under ``torchrun`` -- a folder of images or videos shared between several processes, GPUs or machines.

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
  share they are working on first): rank 0 raises it, the others :class:`PeerFailed`. A
  process that dies outright (killed, crashed) is torchrun's to notice: it stops the others
  with SIGTERM, and they finalise what they wrote, as on Ctrl-C.

Planning (free names, inputs never outputs) is :mod:`detector.planning`'s, video discovery
:mod:`detector.io.videos`', the collectives :mod:`detector.distributed`'s; printing is the CLI's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DetectorConfig
from .distributed import Group, PeerFailed, describe_error, distributed_from_env, env_world_size, one_line
from .errors import DetectorError, Interrupted, SourceError
from .io.sinks import _finalise, partial_path, prepare_output
from .io.sources import GLOB_CHARS, STREAM_SCHEMES, ImageSource, open_source
from .io.types import Frame
from .io.videos import find_videos
from .planning import FolderPlan, ImagePlan, OutputPlan, plan_outputs, plan_video_outputs
from .stats import Stats

if TYPE_CHECKING:  # imported where used: a --ray driver and its decode tasks never load torch
    from .predictor import Detector
    from .runner import RunResult

log = logging.getLogger(__name__)
WAIT = timedelta(hours=24)
"""How long a process waits at a step for the slowest one (e.g. the one with the longest video)."""


@dataclass(frozen=True)
class FolderOptions:
    """What ``detector run`` passes on for a folder or a torchrun run (typed, not argparse's)."""

    out: Path | None = None
    json: Path | None = None
    stats: Path | None = None
    """Where the stats summary goes (the caller writes it; :class:`FolderResult` has the figures)."""
    keep_stats: bool = False
    """Collect per-frame timings for a stats table."""
    stride: int = 1
    start: int = 0
    end: int | None = None
    max_frames: int | None = None
    hud: bool = False
    batch_size: int | None = None
    detect_threads: int | None = None
    codec: str = "auto"
    progress: bool = True
    watch: bool = False
    """A live view or window was asked for: refused (these runs write files only)."""
    render_procs: int = 0
    """Draw each output in that many worker processes (``run(render_procs=...)``); not on Ray."""
    decode: str = "auto"
    """Where videos are decoded (``run(decode=...)``: NVDEC on a CUDA run when it can); Ray decodes on the CPU."""


@dataclass(frozen=True)
class FolderResult:
    """What a folder or torchrun run did, for rank 0 to report."""

    plan: FolderPlan | ImagePlan
    frames: int
    detections: int
    seconds: float
    processes: int
    videos: int | None
    """Videos run (a folder of videos), else None."""
    skipped: list[str]
    stats: Stats | None

    @property
    def stats_path(self) -> Path | None:
        return self.plan.stats if isinstance(self.plan, FolderPlan) else self.plan.outputs.stats


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


def many_inputs(spec: str | None) -> bool:
    """Whether ``detector run SPEC`` is this module's: a folder or glob of videos, or any run
    under torchrun. Raises ``SourceError`` for a folder of both images and videos."""
    return env_world_size() > 1 or find_videos(spec) is not None


def run_folder(cfg: DetectorConfig, spec: str | Path, options: FolderOptions) -> FolderResult | None:
    """Run a folder of videos, or share a folder under torchrun (see the module docstring).
    Returns the result on rank 0 (None on the others); raises the run's error on rank 0 and
    :class:`PeerFailed` on the others."""
    with distributed_from_env(cfg, timeout=WAIT) as (cfg, rank):
        if rank != 0:  # one voice: rank 0 reports progress; every process still warns
            logging.getLogger("detector").setLevel(logging.WARNING)
        return _run(cfg, Group(), spec, options)


def plan_folder(spec: str | Path, options: FolderOptions, *, runner: str = "torchrun") -> FolderPlan | ImagePlan:
    """The inputs of a folder or glob and where each goes, planned once before any work (free names,
    inputs never outputs; :mod:`detector.planning`): by rank 0 under torchrun, by the driver of a
    ``--ray`` run (``runner`` names the one asked, for the messages)."""
    if options.watch:
        raise DetectorError(
            f"--serve and --show watch one input, but a folder of videos or a {runner} run writes files only; "
            "drop them, or run one video at a time to watch it"
        )
    videos = find_videos(spec)
    if videos is not None:
        return plan_video_outputs(videos, options.out, options.json, options.stats)
    text = str(spec)
    path = Path(text).expanduser()
    if not text.isdigit() and not text.lower().startswith(STREAM_SCHEMES):
        if path.is_dir() or (any(c in text for c in GLOB_CHARS) and not path.exists()):
            with open_source(text) as source:
                assert isinstance(source, ImageSource)
                outputs = plan_outputs(source, options.out, options.json, stats=options.stats)
                return ImagePlan(source.paths, Path(source.info.path), source.base, outputs)
        if not path.exists():
            raise SourceError(f"input {text} not found; check the path")
    if runner == "torchrun":
        raise SourceError(
            f"torchrun shares the images or videos of a folder or glob between processes, and {text} is one input; "
            "run it without torchrun"
        )
    raise SourceError(
        f"{runner} runs the images or videos of a folder or glob, and {text} is one input; run it without {runner}"
    )


def _part(json_path: Path, rank: int) -> Path:
    """Where a process writes its JSON lines of an image folder until rank 0 merges them."""
    return json_path.with_name(f"{json_path.stem}.part{rank}-{os.getpid()}{json_path.suffix}")


def _run(cfg: DetectorConfig, group: Group, spec: str | Path, options: FolderOptions) -> FolderResult | None:
    from .predictor import Detector

    plan = group.by_rank0(lambda: plan_folder(spec, options))
    progress = options.progress and group.rank == 0
    detector = group.step(lambda: Detector.from_config(cfg, progress=progress))
    log.info("model %s on %s (%s); %d process(es)", detector.name, detector.device, detector.precision, group.size)
    start = time.perf_counter()
    part = _part(plan.outputs.json, group.rank) if isinstance(plan, ImagePlan) and plan.outputs.json else None
    try:
        if isinstance(plan, FolderPlan):
            outcome = _run_videos(detector, plan, options, group, progress)
        else:
            outcome = _run_images(detector, plan, part, options, group, progress)
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
            final = (describe_error(exc), False)
    error, merged = group.from_rank0(final)
    if merged and part is not None:
        part.unlink(missing_ok=True)
    if error is not None:
        if group.rank == 0:
            raise DetectorError(error)
        raise PeerFailed
    if group.rank != 0:
        return None
    seconds = time.perf_counter() - start
    return FolderResult(
        plan=plan,
        frames=sum(o.frames for o in outcomes),
        detections=sum(o.detections for o in outcomes),
        seconds=seconds,
        processes=group.size,
        videos=sum(o.videos for o in outcomes) if isinstance(plan, FolderPlan) else None,
        skipped=[s for o in outcomes for s in o.skipped],
        stats=merge_stats([s for o in outcomes for s in o.stats], seconds) if options.keep_stats else None,
    )


def _run_videos(detector: Detector, plan: FolderPlan, options: FolderOptions, group: Group, progress: bool) -> Outcome:
    """This process's videos, one after the other; stops at the first error (an undecodable video
    is skipped with a warning)."""
    from .io.nvdec import NvdecUnavailable
    from .predictor import cuda_index
    from .runner import run

    outcome = Outcome()
    try:
        for video, media, jsonl in plan.items[group.rank :: group.size]:
            try:
                source = open_source(video, stride=options.stride, start=options.start, end=options.end,
                                     decode=options.decode, gpu=cuda_index(detector.device))  # fmt: skip
            except NvdecUnavailable:  # --decode nvdec that cannot be: every video would be skipped
                raise
            except SourceError as exc:
                log.warning("skipping %s: %s", video, exc)
                outcome.skipped.append(str(video))
                continue
            try:
                outputs = plan_outputs(source, media, jsonl, codec=options.codec)
            except BaseException:
                source.close()
                raise
            log.info("%s -> %s", video, media)
            result = run(detector, source, plan=outputs, max_frames=options.max_frames, progress=progress,
                         hud=options.hud, batch_size=options.batch_size, detect_threads=options.detect_threads,
                         codec=options.codec, render_procs=options.render_procs)  # fmt: skip
            outcome.add(result, keep_stats=options.keep_stats)
            outcome.videos += 1
    except Exception as exc:
        if group.size == 1:
            raise
        outcome.error = describe_error(exc)
    return outcome


def _run_images(
    detector: Detector, plan: ImagePlan, part: Path | None, options: FolderOptions, group: Group, progress: bool
) -> Outcome:
    """This process's images, written to the shared folder, its JSON lines to ``part``."""
    from .runner import run

    outcome = Outcome()
    paths = plan.paths[: options.max_frames] if options.max_frames else plan.paths
    try:
        if paths[group.rank :: group.size]:
            if part is not None:
                prepare_output(part)
            source = ImageShare(paths, plan.origin, plan.base, group.rank, group.size)
            result = run(detector, source, plan=OutputPlan(plan.outputs.out, part), progress=progress,
                         hud=options.hud, batch_size=options.batch_size, detect_threads=options.detect_threads,
                         render_procs=options.render_procs)  # fmt: skip
            outcome.add(result, keep_stats=options.keep_stats)
    except Exception as exc:
        outcome.error = describe_error(exc)
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


def merge_stats(parts: list[Stats], seconds: float) -> Stats:
    """One table for several runs: every frame's timings; ``seconds`` of wall time in all."""
    total = Stats(frames=sum(s.frames for s in parts), seconds=seconds)
    for s in parts:
        for stage, values in s.stages.items():
            total.stages.setdefault(stage, []).extend(values)
        total.latency_ms.extend(s.latency_ms)
    return total
