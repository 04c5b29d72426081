"""``detector run FOLDER|GLOB --ray [ADDRESS]``: a folder of images or videos on Ray, on this machine or
a cluster, with the outputs of a single-process run.

- **Where.** Without an address (and without ``RAY_ADDRESS``) a local Ray starts with this machine's
  cores and stops at the end; with one (``auto``, ``HOST:6379``, ``ray://HOST:10001``) the run joins
  that cluster, whose nodes must see the input and output folders at the same paths (shared storage)
  and have this package installed. A Ray already started in this process (a notebook, the tests) is
  used as it is and left running.
- **Workers.** One model-holding actor per GPU (``--device`` not ``cpu``), else ``--workers N``
  (default: one per CPU of the cluster), each with its share of the CPUs as torch threads.
- **Images** are a Ray dataset of paths, decoded in tasks (``flat_map``) and detected in batches of
  ``--batch-size`` by the actors (``map_batches`` with a class, ``concurrency=workers``). Each batch
  holds the consecutive images a single-process run batches together (one block per batch), the
  actors draw and write the annotated images, and the driver writes the one ``.jsonl`` in input order.
- **Videos** are one task each, handed out longest first to whichever actor is free, so a long video
  never holds up the rest; each actor runs a video exactly as a single-process run does
  (:func:`detector.runner.run`), writing ``<name>.mp4`` and ``<name>.jsonl``.
- **Guarantees** are those of a single-process run: outputs planned once before work starts
  (:func:`detector.folder_run.plan_folder`), inputs never written, files written under temporary names
  and renamed when complete; a stop (Ctrl-C, SIGTERM) keeps what is done (videos in progress are cut
  where they are, as in one process).
- **Faults.** An actor whose process dies is restarted by Ray and its input redone (temporary files the
  dead process left are removed at the end). An undecodable input is skipped with a warning; any other
  error ends the run with one line.
- **Progress**: one bar on the driver, over images or frames. Ray's own console output is kept off
  (worker logs stay in Ray's log folder, Ray Data's progress bars and plans are off).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import __distribution__
from .config import DetectorConfig
from .errors import DetectorError, Interrupted, SourceError, StopPipeline
from .folder_run import FolderOptions, FolderResult, Outcome, merge_stats, plan_folder
from .io.sinks import _finalise, partial_path
from .planning import FolderPlan, ImagePlan
from .stats import Stats

log = logging.getLogger(__name__)
RAY_MISSING = f"--ray needs Ray, an optional extra: pip install '{__distribution__}[ray]'"
POLL_S = 0.2
"""How often the driver updates the progress bar (and a video worker reports its frames)."""
STOP_WAIT_S = 60.0
"""How long a stopped run waits for the workers to finalise the videos they are writing."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """A cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None or "": ``RAY_ADDRESS``, else local."""
    workers: int | None = None
    """Model-holding actors (default: one per GPU, else one per CPU)."""


def import_ray() -> ModuleType:
    """Ray and Ray Data, or a :class:`DetectorError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 (the extra is ray[data])
    except ImportError:
        raise DetectorError(RAY_MISSING) from None
    return ray


# -- the Ray session --------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Ray for this run: the one this process already started, else a cluster's (``address`` or
    ``RAY_ADDRESS``), else a local one with this machine's cores; quiet on the console."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_operator_progress_bars = False
    for name in ("ray", "ray.data", "ray.util"):  # e.g. Ray Data's "progress bars disabled", its plans
        logging.getLogger(name).setLevel(logging.ERROR)
    with _signals_kept() as reinstall:
        if ray.is_initialized():
            reinstall()
            yield
            return
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # worker logs stay in Ray's log folder (log_to_driver off)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # its notice on every local start
        # A local Ray starts its workers at nice 15: on a busy machine they would lose the cores a run
        # without --ray gets (2x slower measured here beside other work); run them at the caller's priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # The driver's C++ core worker logs to the console: e.g. an error-level note on every Ray Data actor
        # (its constructor arguments are in the object store) that is not ours to fix.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        target = address or os.environ.get("RAY_ADDRESS") or None
        try:
            with _quiet_stderr():  # the core worker's line saying it read RAY_BACKEND_LOG_LEVEL
                ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                         configure_logging=True)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {target}" if target else "a local Ray"
            raise DetectorError(f"cannot start or reach {where}: {_first_line(exc)}") from None
        reinstall()
        try:
            yield
        finally:
            ray.shutdown()


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_received: list[int] = []
"""The stop signals received during a run, in order: Ray's waits turn the :class:`Interrupted` the
CLI's handler raises into a plain ``KeyboardInterrupt``, so this tells which signal it was."""


@contextlib.contextmanager
def _signals_kept() -> Iterator[Callable[[], None]]:
    """Yields a function that puts back the stop-signal handlers in place now (the CLI's; ``ray.init``
    sets its own for SIGTERM), each wrapped to note its signal in :data:`_received`; they are restored
    as they were at the end."""
    before: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                sig = getattr(signal, name)
                before[sig] = signal.getsignal(sig)
    _received.clear()

    def noting(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        def note(signum: int, frame: Any) -> Any:
            _received.append(signum)
            return handler(signum, frame)

        return note

    def reinstall() -> None:
        for sig, handler in before.items():
            signal.signal(sig, noting(handler) if callable(handler) else handler)

    try:
        yield reinstall
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _as_interrupted(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """The stop as the CLI raised it (:class:`Interrupted`), also when Ray turned it into a plain
    ``KeyboardInterrupt``; a plain one when no signal handler of the CLI's saw it."""
    if isinstance(exc, Interrupted) or not _received:
        return exc
    sig = signal.Signals(_received[0])
    return Interrupted(sig.value, sig.name)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment (C++ code writes there directly); Python errors still raise."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Placement:
    """How many actors, and what each asks of Ray."""

    workers: int
    num_cpus: float
    num_gpus: float
    threads: int

    def remote_args(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}


def placement(ray: ModuleType, cfg: DetectorConfig, workers: int | None) -> Placement:
    """One actor per GPU when the model may run on one, else ``workers`` (default one per CPU), each
    asking for its share of the CPUs (never more than there are, so every actor can start)."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1.0)) or 1.0
    gpus = int(resources.get("GPU", 0))
    if gpus and cfg.device != "cpu":
        n = workers or gpus
        return Placement(n, 1.0, min(1.0, gpus / n), 1)
    n = workers or max(1, int(cpus))
    share = cpus / n
    return Placement(n, min(share, float(max(1, int(share)))), 0.0, max(1, int(share)))


# -- workers ----------------------------------------------------------------------------------


def _load(cfg: DetectorConfig, threads: int) -> tuple[Any, str | None]:
    """The worker's model, or the one line that says why it could not load (reported, not retried)."""
    import torch

    from .predictor import Detector

    torch.set_num_threads(threads)
    try:
        return Detector.from_config(cfg, progress=False), None
    except DetectorError as exc:
        return None, str(exc)
    except Exception as exc:  # a model that fails on a worker: its one line for the driver
        return None, f"{type(exc).__name__}: {_first_line(exc)}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DetectorError):
        return str(exc)
    log.exception("unexpected error")  # the traceback, in the worker's log
    return f"{type(exc).__name__}: {_first_line(exc)}"


def decode_chunk(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A Ray task's share of the images: decoded BGR arrays; an undecodable one marked, not raised."""
    from .io.sources import read_image

    rows = []
    for index, path, name in zip(row["index"], row["path"], row["name"], strict=True):
        image = read_image(Path(path))
        ok = image is not None
        rows.append({"index": int(index), "path": str(path), "name": str(name), "ok": ok,
                     "image": image if ok else np.zeros((1, 1, 3), np.uint8)})  # fmt: skip
    return rows


class ImageWorker:
    """A Ray Data actor: detects a batch of decoded images, draws and writes them as the single-process
    run does, and returns each image's JSON line (or why it was skipped, or the error)."""

    def __init__(self, cfg: DetectorConfig, out: str | None, threads: int, hud: bool) -> None:
        self.detector, self.error = _load(cfg, threads)
        self.out = Path(out) if out is not None else None
        self.hud = hud
        self.status: Any = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .io.sinks import ImageSink, json_name
        from .io.types import Frame
        from .render import annotate
        from .render.hud import Hud

        n = len(batch["index"])
        lines, counts, errors = [""] * n, [0] * n, [""] * n
        keep = [i for i in range(n) if bool(batch["ok"][i])]
        try:
            if self.error is not None:
                raise DetectorError(self.error)
            # Ray hands arrays over read-only (zero copy): each image is drawn on, so copied once.
            frames = [Frame(int(batch["index"][i]), 0.0, np.array(batch["image"][i], np.uint8, order="C"),
                            str(batch["name"][i]), time.perf_counter()) for i in keep]  # fmt: skip
            detector = self.detector
            results = (
                detector.postprocess(detector.forward(detector.preprocess([f.image for f in frames]))) if frames else []
            )
            sink = ImageSink(self.out, folder=True) if self.out is not None else None
            if self.hud and self.status is None:
                self.status = Hud(detector.name)
            for i, frame, dets in zip(keep, frames, results, strict=True):
                annotate(frame.image, dets, copy=False)
                if self.hud:
                    self.status.tick()
                    self.status.draw(frame.image, frame.index, (time.perf_counter() - frame.captured_at) * 1000)
                if sink is not None:
                    sink.write(frame, dets)
                record = {"frame": frame.index, "time": 0.0, **json_name(frame.name), "detections": dets.to_dict()}
                lines[i] = json.dumps(record, separators=(",", ":")) + "\n"
                counts[i] = len(dets)
        except Exception as exc:
            errors = [_describe(exc)] * n
        return {"index": batch["index"], "path": batch["path"], "ok": batch["ok"], "line": np.array(lines, object),
                "detections": np.array(counts), "error": np.array(errors, object)}  # fmt: skip


class Progress:
    """A Ray actor the video workers report their frames to, and the driver reads (and stops) them by."""

    def __init__(self) -> None:
        self.frames = 0
        self.stop = False

    def add(self, n: int) -> bool:
        """Count ``n`` frames; whether to stop."""
        self.frames += n
        return self.stop

    def take(self) -> int:
        n, self.frames = self.frames, 0
        return n

    def request_stop(self) -> None:
        self.stop = True


class FrameCounter:
    """A sink of the worker's run: reports its frames to :class:`Progress` every :data:`POLL_S`, and
    ends the run (its outputs finalised, as after Ctrl-C) when the driver asks to stop."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.pending = 0
        self.last = time.monotonic()

    def write(self, frame: Any, detections: Any) -> None:
        self.pending += 1
        if time.monotonic() - self.last >= POLL_S:
            self.flush()

    def flush(self) -> None:
        import ray

        n, self.pending, self.last = self.pending, 0, time.monotonic()
        if ray.get(self.progress.add.remote(n)):
            raise StopPipeline

    def close(self) -> None:
        with contextlib.suppress(StopPipeline):
            self.flush()


class VideoWorker:
    """A Ray actor holding a model: runs one video at a time as a single-process run does."""

    def __init__(self, cfg: DetectorConfig, threads: int, progress: Any) -> None:
        self.detector, self.error = _load(cfg, threads)
        self.progress = progress

    def pid(self) -> int:
        return os.getpid()

    def run_video(self, video: str, media: str, jsonl: str, options: FolderOptions) -> dict[str, Any]:
        from .io.sources import open_source
        from .planning import plan_outputs
        from .runner import run

        if self.error is not None:
            return {"error": self.error}
        try:
            try:
                source = open_source(video, stride=options.stride, start=options.start, end=options.end)
            except SourceError as exc:
                return {"skipped": str(exc)}
            try:
                outputs = plan_outputs(source, Path(media), Path(jsonl), codec=options.codec)
            except BaseException:
                source.close()
                raise
            result = run(self.detector, source, plan=outputs, max_frames=options.max_frames, progress=False,
                         hud=options.hud, batch_size=options.batch_size, detect_threads=options.detect_threads,
                         codec=options.codec, sinks=[FrameCounter(self.progress)])  # fmt: skip
        except Exception as exc:
            return {"error": _describe(exc)}
        return {"frames": result.frames, "detections": result.detections,
                "stats": result.stats if options.keep_stats else None}  # fmt: skip


# -- the driver -------------------------------------------------------------------------------


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int | None, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", leave=False)


def run_ray(cfg: DetectorConfig, spec: str | Path, options: FolderOptions, ray_options: RayOptions) -> FolderResult:
    """Run a folder or glob of images or videos on Ray (see the module docstring). Raises
    :class:`DetectorError` (one line) for a user's error and for any error of a worker;
    :class:`Interrupted` after a stop, with what was kept in its ``detail``."""
    ray = import_ray()
    if ray_options.workers is not None and ray_options.workers < 1:
        raise DetectorError(f"--workers must be at least 1, got {ray_options.workers}")
    plan = plan_folder(spec, options, runner="--ray")
    start = time.perf_counter()
    try:
        with ray_session(ray, ray_options.address):
            place = placement(ray, cfg, ray_options.workers)
            each = f"{place.num_gpus:g} GPU each" if place.num_gpus else f"{place.threads} thread(s) each"
            log.info("model %s on %d Ray worker(s) (%s)", cfg.model, place.workers, each)
            if isinstance(plan, FolderPlan):
                outcome = _run_videos(ray, cfg, plan, options, place)
            else:
                outcome = _run_images(ray, cfg, plan, options, place)
    finally:  # after a local Ray is down: every worker that wrote is done or gone
        remove_stale_partials(plan)
    seconds = time.perf_counter() - start
    stats = None
    if options.keep_stats:
        stats = merge_stats(outcome.stats, seconds) if outcome.stats else Stats(frames=outcome.frames, seconds=seconds)
    return FolderResult(plan=plan, frames=outcome.frames, detections=outcome.detections, seconds=seconds,
                        processes=place.workers, videos=outcome.videos if isinstance(plan, FolderPlan) else None,
                        skipped=outcome.skipped, stats=stats)  # fmt: skip


def _run_images(ray: ModuleType, cfg: DetectorConfig, plan: ImagePlan, options: FolderOptions,
                place: Placement) -> Outcome:  # fmt: skip
    from .io.sources import image_names

    paths = plan.paths[: options.max_frames] if options.max_frames else plan.paths
    names = image_names(plan.paths, plan.base)[: len(paths)]
    batch = options.batch_size or (8 if place.num_gpus else 1)  # the single-process default on each device
    # Blocks of whole batches (so each batch is the consecutive images a single-process run batches
    # together); several per block, up to about 16 images, as Ray's cost is per block -- while there
    # are still 4 blocks per worker to share.
    per_block = batch * max(1, min(16 // batch, -(-len(paths) // (batch * place.workers * 4))))
    chunks = [{"index": list(range(i, min(i + per_block, len(paths)))),
               "path": [str(p.resolve()) for p in paths[i : i + per_block]], "name": names[i : i + per_block]}
              for i in range(0, len(paths), per_block)]  # fmt: skip
    out = str(plan.outputs.out.resolve()) if plan.outputs.out is not None else None
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    # Decoding asks for no CPU of its own (the actors hold them all), so it is bounded by a pool size.
    ds = ds.flat_map(decode_chunk, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2 * place.workers))
    ds = ds.map_batches(ImageWorker, fn_constructor_kwargs={"cfg": cfg, "out": out, "threads": place.threads,
                                                            "hud": options.hud},
                        compute=ray.data.ActorPoolStrategy(size=max(1, min(place.workers, len(chunks)))),
                        batch_size=batch,
                        batch_format="numpy", **place.remote_args())  # fmt: skip
    outcome = Outcome()
    lines: dict[int, str] = {}
    error: str | None = None
    bar = _bar(len(paths), options.progress)
    try:
        for result in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            for index, path, ok, line, count, err in zip(result["index"], result["path"], result["ok"],
                                                         result["line"], result["detections"], result["error"],
                                                         strict=True):  # fmt: skip
                if err:
                    error = str(err)
                    break
                bar.update()
                if not ok:
                    log.warning("skipping %s: not a decodable image", path)
                    outcome.skipped.append(str(path))
                    continue
                lines[int(index)] = str(line)
                outcome.frames += 1
                outcome.detections += int(count)
            if error is not None:
                break
    except KeyboardInterrupt as exc:  # a stop signal: what is done is kept
        stop = _as_interrupted(exc)
        if isinstance(stop, Interrupted):
            kept = [str(p) for p in (plan.outputs.out, plan.outputs.json) if p is not None]
            stop.detail = f"; the frames processed so far are in {' and '.join(kept)}"
        _write_lines(plan, lines, failed=False)
        raise stop from None
    except Exception as exc:
        error = f"a Ray worker failed: {_first_line(exc)}"
    finally:
        bar.close()
    _write_lines(plan, lines, failed=error is not None)
    if error is not None:
        raise DetectorError(error)
    return outcome


def _write_lines(plan: ImagePlan, lines: dict[int, str], *, failed: bool) -> None:
    """The one ``.jsonl`` of an image folder, in input order, renamed into place when written."""
    target = plan.outputs.json
    if target is None:
        return
    tmp = partial_path(target)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(lines[i] for i in sorted(lines))
        _finalise(tmp, target, failed=failed, written=len(lines))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DetectorError(f"cannot write {target} ({exc.strerror}); choose a writable --json path") from None


def planned_frames(video: Path, options: FolderOptions) -> int:
    """Frames a run of ``video`` will detect, from its header (0 when it cannot tell)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    end = count if options.end is None else min(options.end, count)
    n = len(range(options.start, end, options.stride))
    return n if options.max_frames is None else min(n, options.max_frames)


def _run_videos(ray: ModuleType, cfg: DetectorConfig, plan: FolderPlan, options: FolderOptions,
                place: Placement) -> Outcome:  # fmt: skip
    sizes = {video: planned_frames(video, options) for video, _, _ in plan.items}
    # Longest first, each to the first free worker: the longest video never starts last.
    queue = deque(sorted(plan.items, key=lambda item: -sizes[item[0]]))
    progress = ray.remote(num_cpus=0)(Progress).remote()
    worker_class = ray.remote(max_restarts=-1, max_task_retries=-1, **place.remote_args())(VideoWorker)
    workers = [worker_class.remote(cfg, place.threads, progress) for _ in range(min(place.workers, len(queue)))]
    idle = list(workers)
    running: dict[Any, tuple[Any, Path]] = {}
    outcome = Outcome()
    error: str | None = None
    bar = _bar(sum(sizes.values()) or None, options.progress)

    def collect(ref: Any) -> None:
        nonlocal error
        worker, video = running.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the worker could not be restarted, or Ray failed
            result = {"error": f"a Ray worker failed on {video}: {_first_line(exc)}"}
        idle.append(worker)
        if "skipped" in result:
            log.warning("skipping %s: %s", video, result["skipped"])
            outcome.skipped.append(str(video))
        elif "error" in result:
            error = error or result["error"]
        else:
            outcome.frames += result["frames"]
            outcome.detections += result["detections"]
            outcome.videos += 1
            if result["stats"] is not None:
                outcome.stats.append(result["stats"])

    try:
        while (queue and error is None) or running:
            while idle and queue and error is None:
                video, media, jsonl = queue.popleft()
                log.info("%s -> %s", video, media)
                worker = idle.pop()
                ref = worker.run_video.remote(str(video.resolve()), str(media.resolve()), str(jsonl.resolve()),
                                              options)  # fmt: skip
                running[ref] = (worker, video)
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in done:
                collect(ref)
            frames = ray.get(progress.take.remote())
            if frames:
                bar.update(frames)
            if error is not None and running:  # the first error ends the run: the others stop where they are
                progress.request_stop.remote()
    except KeyboardInterrupt as exc:  # a stop signal: the videos in progress are cut where they are, as in one process
        stop = _as_interrupted(exc)
        if isinstance(stop, Interrupted):
            stop.detail = f"; the frames processed so far are in {plan.out}"
        _stop_videos(ray, progress, running)
        raise stop from None
    finally:
        bar.close()
    if error is not None:
        raise DetectorError(error)
    return outcome


def _stop_videos(ray: ModuleType, progress: Any, running: dict[Any, Any]) -> None:
    """Ask the workers to end the videos in progress (finalised with the frames done), and wait for them."""
    if not running:
        return
    with contextlib.suppress(Exception):  # Ray going down with the stop: its partial files are removed after
        ray.get(progress.request_stop.remote(), timeout=STOP_WAIT_S)
        ray.wait(list(running), num_returns=len(running), timeout=STOP_WAIT_S)


PARTIAL = re.compile(r"^(?P<stem>.*)\.partial-(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(plan: FolderPlan | ImagePlan) -> list[Path]:
    """Remove the temporary files of planned outputs that a dead worker process left (one killed
    mid-write, whose input another redid). Returns what was removed."""
    targets: list[Path] = []
    if isinstance(plan, FolderPlan):
        targets = [p for _, media, jsonl in plan.items for p in (media, jsonl)]
    elif plan.outputs.json is not None:
        targets = [plan.outputs.json]
    folders: dict[Path, set[str]] = {}
    for target in targets:
        folders.setdefault(target.parent, set()).add(target.name)
    if isinstance(plan, ImagePlan) and plan.outputs.out is not None:
        from .io.sources import image_names

        for name in image_names(plan.paths, plan.base):
            target = plan.outputs.out / name
            folders.setdefault(target.parent, set()).add(target.name)
    removed = []
    for folder, names in folders.items():
        if not folder.is_dir():
            continue
        for path in folder.glob("*.partial-*"):
            m = PARTIAL.match(path.name)
            if m is not None and m["stem"] + (m["suffix"] or "") in names and not _alive(int(m["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
