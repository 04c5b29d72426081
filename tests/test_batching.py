"""Batched inference: results equal one frame at a time, in order, the last partial batch
included; a batch holds frames of one size only; live sources stay one frame at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detector import Detections, Detector, run, stream
from detector.cli import main
from detector.io.sources import open_source
from detector.io.types import Frame
from detector.pipeline import run_pipeline

from .conftest import DEMO, assert_same_detections, tiny_config


class Recording(nn.Module):
    """Records the size of every batch it is given; one box per image scoring its mean value."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[int, int]]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.batches.append([tuple(img.shape[-2:]) for img in images])
        return [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": img.mean().reshape(1),
                 "labels": torch.tensor([1])} for img in images]  # fmt: skip


def frames(sizes: list[tuple[int, int]]) -> Iterator[Frame]:
    for i, (h, w) in enumerate(sizes):
        yield Frame(i, i / 10, np.full((h, w, 3), i, np.uint8), f"f{i}.png")


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain-kernels", "onednn-kernels"])
def test_batched_real_model_equals_one_at_a_time(mkldnn: bool) -> None:
    """Random-init Faster R-CNN on real frames: batch 3 over 7 frames (3 + 3 + 1) gives what batch 1 gives.

    Up to float rounding: on this project's 2-core machine the results are bit-identical with
    oneDNN off, but elsewhere (a 16-core CPU with wider vectors) the box head's matrix
    products round differently by batch size (0.012 px seen), and random weights give
    near-tied scores whose order such rounding can swap (see ``match_share``)."""
    torch.manual_seed(0)
    detector = Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", score_threshold=0.0))
    results: dict[int, list[tuple[int, object]]] = {1: [], 3: []}
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        for size in (1, 3):
            source = open_source(DEMO)
            with source:
                run_pipeline(source, detector, lambda f, d, size=size: results[size].append((f.index, d)),
                             max_frames=7, batch_size=size)  # fmt: skip
    assert [i for i, _ in results[3]] == [i for i, _ in results[1]] == list(range(7))
    assert sum(len(d) for _, d in results[1]) > 0  # random weights still give boxes at score 0
    for (_, a), (_, b) in zip(results[1], results[3], strict=True):
        assert_same_detections(a, b)


def test_batches_fill_up_end_partial_and_never_mix_sizes() -> None:
    model = Recording()
    sizes = [(8, 8)] * 5 + [(6, 10)] * 2 + [(8, 8)]
    seen: list[int] = []
    run_pipeline(frames(sizes), Detector(model, device="cpu"), lambda f, d: seen.append(f.index), batch_size=4)
    assert seen == list(range(8))
    assert [len(b) for b in model.batches] == [4, 1, 2, 1]
    assert all(len(set(b)) == 1 for b in model.batches)


def test_stream_batches_and_keeps_order() -> None:
    model = Recording()
    detector = Detector(model, device="cpu")
    with stream(detector, frames([(8, 8)] * 10), batch_size=4) as results:
        got = [(f.index, float(d.scores[0])) for f, d in results]
    assert [i for i, _ in got] == list(range(10))
    assert all(score == pytest.approx(i / 255) for i, score in got)  # each result belongs to its own frame
    assert [len(b) for b in model.batches] == [4, 4, 2]


class LiveFrames:
    """A live-like source: ``live`` true, frames as they come."""

    live = True

    def __iter__(self) -> Iterator[Frame]:
        return frames([(8, 8)] * 6)


def test_live_sources_are_never_batched() -> None:
    model = Recording()
    detector = Detector(model, device="cpu")
    run_pipeline(LiveFrames(), detector, lambda f, d: None, batch_size=8)
    assert [len(b) for b in model.batches] == [1] * 6
    model.batches.clear()
    assert len(list(stream(detector, LiveFrames(), batch_size=8))) == 6
    assert [len(b) for b in model.batches] == [1] * 6


def test_run_with_batches_writes_every_frame(tmp_path: Path) -> None:
    model = Recording()
    result = run(Detector(model, device="cpu"), DEMO, out=tmp_path / "o.mp4", max_frames=10, batch_size=4,
                 progress=False)  # fmt: skip
    assert result.frames == 10 and [len(b) for b in model.batches] == [4, 4, 2]
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert len(lines) == 10
    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    cap.release()


def test_bad_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(DEMO), "--batch-size", "0", "--out", str(tmp_path / "o.mp4")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --batch-size must be at least 1, got 0"
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        stream(Detector(Recording(), device="cpu"), frames([(8, 8)]), batch_size=0)


def test_gpu_benchmark_script_runs(tmp_path: Path) -> None:
    """benchmarks/gpu.py stays runnable where no GPU is (a CPU smoke run; its figures mean nothing)."""
    import subprocess
    import sys

    from .conftest import ROOT, VIDEO, need

    need(VIDEO)
    args = "--device cpu --models fasterrcnn_resnet50_fpn --batches 2 --precisions fp32 --frames 4 --rounds 1"
    cmd = [sys.executable, "gpu.py", *args.split(), "--min-size", "96", "--max-size", "128", "--detect-threads", "1",
           "2", "--max-detections", "5"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fasterrcnn_resnet50_fpn |")]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in rows]
    # both paths in one run (torchvision's and the batched one), each with 1 and 2 detect threads
    assert [(c[4], c[8]) for c in cells] == [("torchvision", "1"), ("torchvision", "2"), ("batched", "1"),
                                             ("batched", "2")]  # fmt: skip
    assert all(c[1:4] == ["random", "fp32", "off"] and c[6] == "2" for c in cells)  # weights, precision, batch
    assert all(float(c[10]) <= 5 for c in cells)  # boxes per frame within --max-detections
    assert "CPU" in done.stdout.splitlines()[0]  # the device is named
    assert "2/2 images the same" in done.stdout  # the two paths agree on the batch they both ran


def test_model_input_is_contiguous_float_and_bad_batch_sizes_raise() -> None:
    seen: list[torch.Tensor] = []

    class Look(nn.Module):
        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            seen.extend(images)
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
                    for _ in images]  # fmt: skip

    frame = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    detector = Detector(Look(), device="cpu")
    detector(frame)
    (t,) = seen
    assert t.dtype == torch.float32 and t.is_contiguous() and t.shape == (3, 6, 10)
    np.testing.assert_array_equal(t.numpy(), frame[:, :, ::-1].transpose(2, 0, 1) / np.float32(255))
    assert detector.preprocess([frame])[0].dtype == torch.uint8
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        run(detector, DEMO, sinks=[], batch_size=0, progress=False)
    assert stream(detector, frames([(8, 8)])).batch_size == 1  # the CPU default


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_eval_batches_images_of_one_size_and_equals_one_at_a_time() -> None:
    from detector.eval import CocoEvaluator, load_dataset
    from detector.eval.evaluator import size_batches

    from .conftest import COCO_MINI, need

    assert size_batches([1, 2, 3, 4, 5], ["a", "a", "b", "a", "a"], 4) == [[1, 2], [3], [4, 5]]
    assert size_batches([1, 2, 3], ["a"] * 3, 2) == [[1, 2], [3]]
    ann = need(COCO_MINI / "annotations" / "instances_val2017.json")
    dataset = load_dataset(ann, COCO_MINI / "val2017", limit=6)
    torch.manual_seed(0)
    detector = Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", score_threshold=0.0))
    results = {}
    with torch.backends.mkldnn.flags(enabled=False):
        for size in (1, 3):
            evaluator = CocoEvaluator(dataset, class_names=detector.class_names)
            evaluator.run(detector, batch_size=size, progress=False)
            results[size] = evaluator.results
    assert len(results[1]) > 0
    for image_id in {r["image_id"] for r in results[1]} | {r["image_id"] for r in results[3]}:
        a, b = (as_detections([r for r in results[size] if r["image_id"] == image_id]) for size in (1, 3))
        assert_same_detections(a, b)


def as_detections(rows: list[dict]) -> Detections:
    """COCO result rows (xywh boxes) as ``Detections``."""
    boxes = np.array([r["bbox"] for r in rows], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    scores = np.array([r["score"] for r in rows], dtype=np.float32)
    return Detections(boxes, scores, np.array([r["category_id"] for r in rows], dtype=np.int64))


class Jittery(nn.Module):
    """Sleeps a varying time per batch, so concurrent batches finish out of order; records the
    threads it ran in; fails on a batch from frame ``fail_from`` on that runs in a thread whose
    name starts with ``fail_in``."""

    def __init__(self, fail_from: int | None = None, fail_in: str = "") -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.failed: list[int] = []
        self.fail_from = fail_from
        self.fail_in = fail_in

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        import threading
        import time

        first = round(float(images[0].mean()) * 255)
        thread = threading.current_thread().name
        self.threads.add(thread)
        if self.fail_from is not None and first >= self.fail_from and thread.startswith(self.fail_in):
            self.failed.append(first)
            raise RuntimeError("model failed")
        time.sleep(0.002 * ((first * 7) % 5))
        return [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": img.mean().reshape(1),
                 "labels": torch.tensor([1])} for img in images]  # fmt: skip


def test_detect_threads_overlap_batches_and_keep_order() -> None:
    model = Jittery()
    seen: list[tuple[int, float]] = []
    run_pipeline(frames([(8, 8)] * 40), Detector(model, device="cpu"),
                 lambda f, d: seen.append((f.index, float(d.scores[0]))), batch_size=2, detect_threads=3)  # fmt: skip
    assert [i for i, _ in seen] == list(range(40))
    assert all(score == pytest.approx(i / 255) for i, score in seen)  # each result belongs to its own frame
    assert len(model.threads) == 3  # the calling thread and two helpers all detected


@pytest.mark.parametrize("where", ["detector-detect-", "MainThread"], ids=["helper", "calling-thread"])
def test_detect_threads_model_error_is_raised_after_earlier_frames(where: str) -> None:
    model = Jittery(fail_from=20, fail_in=where)
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="model failed"):
        run_pipeline(frames([(8, 8)] * 40), Detector(model, device="cpu"), lambda f, d: seen.append(f.index),
                     batch_size=2, detect_threads=3)  # fmt: skip
    assert seen == list(range(min(model.failed)))  # every frame before the failed batch written, in order


def test_detect_threads_default_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = Jittery()
    run_pipeline(frames([(8, 8)] * 6), Detector(model, device="cpu"), lambda f, d: None, batch_size=2)
    assert len(model.threads) == 1  # one on the CPU by default
    model.threads.clear()
    run_pipeline(LiveFrames(), Detector(model, device="cpu"), lambda f, d: None, detect_threads=4)
    assert len(model.threads) == 1  # a live source: one newest frame at a time, from one thread
    with pytest.raises(ValueError, match="detect_threads must be at least 1"):
        run(Detector(model, device="cpu"), DEMO, sinks=[], detect_threads=0, progress=False)
    assert main(["run", str(DEMO), "--detect-threads", "0", "--out", str(tmp_path / "o.mp4")]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --detect-threads must be at least 1, got 0"
    assert not list(tmp_path.iterdir())


class Raising:
    """A consume callback that raises ``error`` at its ``at``-th frame."""

    def __init__(self, error: BaseException, at: int) -> None:
        self.error, self.at, self.seen = error, at, []

    def __call__(self, frame: Frame, dets: object) -> None:
        if len(self.seen) == self.at:
            raise self.error
        self.seen.append(frame.index)


@pytest.mark.parametrize("kind", ["sink-error", "stop", "ctrl-c"])
def test_detect_threads_errors_from_the_writer_reach_the_caller_as_they_are(kind: str) -> None:
    """A sink's error, a sink's StopPipeline and a Ctrl-C in the writer are what the caller gets,
    never the threads' private signals, whichever thread is where when it happens."""
    from detector.errors import SinkError, StopPipeline

    for attempt in range(30):
        error = {"sink-error": SinkError("disk full"), "stop": StopPipeline(), "ctrl-c": KeyboardInterrupt()}[kind]
        consume = Raising(error, at=5 + attempt % 4)
        model = Jittery()
        if kind == "stop":
            run_pipeline(frames([(8, 8)] * 40), Detector(model, device="cpu"), consume, batch_size=2,
                         detect_threads=3)  # fmt: skip
        else:
            with pytest.raises(type(error)):
                run_pipeline(frames([(8, 8)] * 40), Detector(model, device="cpu"), consume, batch_size=2,
                             detect_threads=3)  # fmt: skip
        assert consume.seen == list(range(consume.at))


def test_detect_threads_raise_the_error_of_the_first_failed_batch() -> None:
    """Every batch from frame 16 on fails, in whatever thread: the error raised is the one of the
    first failed batch in frame order, and the output stops right before it."""

    class FailsFrom(Jittery):
        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            first = round(float(images[0].mean()) * 255)
            if first >= 16:
                import time

                time.sleep(0.002 * ((first * 3) % 4))
                raise RuntimeError(f"failed at frame {first}")
            return super().forward(images)

    for _ in range(25):
        consume = Raising(RuntimeError("never"), at=-1)
        with pytest.raises(RuntimeError) as err:
            run_pipeline(frames([(8, 8)] * 40), Detector(FailsFrom(), device="cpu"), consume, batch_size=2,
                         detect_threads=3)  # fmt: skip
        assert consume.seen == list(range(16)) and str(err.value) == "failed at frame 16"


def test_a_batch_larger_than_memory_is_refused_before_any_output(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``--batch-size 100000`` was accepted (Faster R-CNN took 6.7 GB for 48 frames at 320 px): a batch whose
    estimate exceeds the free memory is one line, before any output is opened; one that fits runs."""
    from detector import ConfigError, load_config
    from detector.pipeline import defaults

    det = Detector.from_config(load_config(None, {"model": "retinanet_resnet50_fpn", "weights": "random",
                                                  "min_size": 96, "max_size": 128, "device": "cpu"}))  # fmt: skip
    assert det.resize_limits == (96, 128)
    monkeypatch.setattr(defaults, "available_memory", lambda device_type: 200 * 10**6)
    with pytest.raises(ConfigError, match=r"batch_size 100000 needs about .* GB for 768x576 frames.*use at most \d+"):
        run(det, DEMO, out=tmp_path / "o.mp4", batch_size=100_000, max_frames=2, progress=False)
    assert list(tmp_path.iterdir()) == []
    result = run(det, DEMO, out=tmp_path / "o.mp4", batch_size=4, max_frames=4, progress=False)
    assert result.frames == 4
