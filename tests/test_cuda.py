"""The CUDA path (pinned uint8 upload, float on the GPU, fp16 autocast, one sync per batch)
gives what the CPU gives. These run only where a CUDA GPU is present and are reported as
skipped elsewhere (CI has none); `benchmarks/gpu.py` measures the same path's speed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import Detections, Detector, run

from .conftest import DEMO, assert_same_detections, frames_in, match_share, read_frames, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pair(model: str = "fasterrcnn_resnet50_fpn", **overrides: object) -> tuple[Detector, Detector]:
    """The same random weights on the CPU and on the GPU."""
    torch.manual_seed(0)
    cpu = Detector.from_config(tiny_config(model, min_size=320, max_size=427, score_threshold=0.0))
    gpu = Detector.from_config(tiny_config(model, min_size=320, max_size=427, score_threshold=0.0, device="cuda",
                                           **overrides))  # fmt: skip
    assert isinstance(cpu.model, torch.nn.Module) and isinstance(gpu.model, torch.nn.Module)
    gpu.model.load_state_dict(cpu.model.state_dict())
    return cpu, gpu


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Plain fp32 on the GPU: cuDNN's default TF32 convolutions round far more than the CPU does,
    and it picks its algorithms by batch size."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.mark.parametrize("model", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn"])
def test_cuda_fp32_equals_cpu(model: str) -> None:
    frames = read_frames(DEMO, [0, 5, 10])
    cpu, gpu = pair(model)
    with no_tf32():
        got = gpu(frames)
    want = cpu(frames)
    for a, b in zip(want, got, strict=True):
        assert len(a) > 0
        assert b.boxes.dtype == np.float32 and b.scores.dtype == np.float32
        assert_same_detections(a, b)


def test_cuda_batched_equals_one_at_a_time() -> None:
    frames = read_frames(DEMO, [0, 1, 2, 3, 4])
    _, gpu = pair()
    with no_tf32():
        one = [gpu(f) for f in frames]
        many = gpu(frames)
    for a, b in zip(one, many, strict=True):
        assert_same_detections(a, b)


def test_cuda_fp16_close_to_fp32_and_outputs_float32() -> None:
    frames = read_frames(DEMO, [0, 7])
    _, fp32 = pair()
    _, fp16 = pair(precision="fp16")
    for a, b in zip(fp32(frames), fp16(frames), strict=True):
        assert b.boxes.dtype == np.float32 and b.scores.dtype == np.float32
        assert match_share(a, b, iou=0.7) >= 0.6, "fp16 autocast moved the boxes too far from fp32"


def test_cuda_run_end_to_end_batched(tmp_path: Path) -> None:
    _, gpu = pair(precision="fp16")
    result = run(gpu, DEMO, out=tmp_path / "o.mp4", json=tmp_path / "o.jsonl", batch_size=4, progress=False)
    n = frames_in(DEMO)
    assert result.frames == n
    assert frames_in(tmp_path / "o.mp4") == n
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == n


def test_cuda_detect_threads_keep_order_and_results(tmp_path: Path) -> None:
    _, gpu = pair()
    lines = {}
    with no_tf32():
        for threads in (1, 3):
            out = tmp_path / f"t{threads}"
            run(gpu, DEMO, out=out / "o.mp4", json=out / "o.jsonl", batch_size=2, detect_threads=threads,
                progress=False)  # fmt: skip
            lines[threads] = (out / "o.jsonl").read_text().splitlines()
    assert len(lines[3]) == len(lines[1]) == frames_in(DEMO)
    for a, b in zip(lines[1], lines[3], strict=True):
        ra, rb = json.loads(a), json.loads(b)
        assert ra["frame"] == rb["frame"]
        assert_same_detections(from_json(ra), from_json(rb))


def from_json(record: dict) -> Detections:
    dets = record["detections"]
    return Detections(np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
                      np.array([d["score"] for d in dets], np.float32),
                      np.array([d["label"] for d in dets], np.int64))  # fmt: skip


@pytest.mark.parametrize("model", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn"])
def test_cuda_graphs_replay_gives_the_batched_paths_detections(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DETECTOR_CUDA_GRAPHS=on on the GPU: the first batch of a shape runs uncaptured, the next ones replay
    the captured graph; every batch gives what the batched path gives without graphs (the same kernels),
    and a replay's results survive the next replay (they are copied to the host first)."""
    frames = read_frames(DEMO, [0, 5, 10, 15])
    _, plain = pair(model)
    monkeypatch.setenv("DETECTOR_CUDA_GRAPHS", "on")
    _, graphs = pair(model)
    assert graphs.engine.batched is not None and graphs.engine.batched.graphs
    with no_tf32():
        want = [plain(frames[:2]), plain(frames[2:])]
        got = [graphs(frames[:2]) for _ in range(3)] + [graphs(frames[2:])]
    for batch in got[:3]:
        for a, b in zip(want[0], batch, strict=True):
            assert_same_detections(a, b)
    for a, b in zip(want[1], got[3], strict=True):
        assert_same_detections(a, b)
