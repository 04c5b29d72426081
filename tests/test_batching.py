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

from detector import Detector, run, stream
from detector.cli import main
from detector.io.sources import open_source
from detector.io.types import Frame
from detector.pipeline import run_pipeline

from .conftest import DEMO, tiny_config


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
@pytest.mark.parametrize("mkldnn", [False, True], ids=["exact-kernels", "default-kernels"])
def test_batched_real_model_equals_one_at_a_time(mkldnn: bool) -> None:
    """Random-init Faster R-CNN on real frames: batch 3 over 7 frames (3 + 3 + 1) gives what batch 1 gives.

    With oneDNN off, convolutions compute each image on its own, so the results must be
    bit-identical; with the default kernels a batch may sum in another order, so the check
    allows float rounding (random weights amplify it: up to ~0.03 px measured here)."""
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
        if not mkldnn:
            np.testing.assert_array_equal(b.boxes, a.boxes)
            np.testing.assert_array_equal(b.scores, a.scores)
            np.testing.assert_array_equal(b.labels, a.labels)
            continue
        assert len(a) == len(b)
        np.testing.assert_allclose(b.boxes, a.boxes, rtol=0, atol=0.1)
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-3, atol=1e-6)
        np.testing.assert_array_equal(b.labels, a.labels)


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
    with stream(frames([(8, 8)] * 10), detector, batch_size=4) as results:
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
    assert len(list(stream(LiveFrames(), detector, batch_size=8))) == 6
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
        stream(frames([(8, 8)]), Detector(Recording(), device="cpu"), batch_size=0)


def test_gpu_benchmark_script_runs(tmp_path: Path) -> None:
    """benchmarks/gpu.py stays runnable where no GPU is (a CPU smoke run; its figures mean nothing)."""
    import subprocess
    import sys

    from .conftest import ROOT, VIDEO, need

    need(VIDEO)
    args = "--device cpu --models fasterrcnn_resnet50_fpn --batches 2 --precisions fp32 --frames 4 --rounds 1"
    cmd = [sys.executable, "gpu.py", *args.split(), "--min-size", "96", "--max-size", "128"]
    done = subprocess.run(cmd, cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fasterrcnn_resnet50_fpn |")]
    assert len(rows) == 1 and "| random | fp32 | off | 2 |" in rows[0]
    assert "CPU" in done.stdout.splitlines()[0]  # the device is named


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
    assert stream(frames([(8, 8)]), detector).batch_size == 1  # the CPU default


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
    with torch.backends.mkldnn.flags(enabled=False):  # each image's convolutions alone: exact comparison
        for size in (1, 3):
            evaluator = CocoEvaluator(dataset, class_names=detector.class_names)
            evaluator.run(detector, batch_size=size, progress=False)
            results[size] = evaluator.results
    assert len(results[1]) > 0 and results[3] == results[1]
