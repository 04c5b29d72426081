"""Shared fixtures. Tests that need ../shared fail (never skip) when it is missing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector import Detections, Detector, load_config
from detector.config import DetectorConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "detector" / "data" / "vtest_excerpt.mp4"
"""The embedded demo clip: 60 frames of vtest.avi, 768x576, 10 fps."""
SHARED = ROOT.parent / "shared"
VIDEO = SHARED / "data" / "video" / "vtest.avi"
COCO_MINI = SHARED / "data" / "coco-mini"
TORCHSCRIPT = SHARED / "models" / "d2go_faster_rcnn_fbnetv3a_c4_coco_int8.torchscript.pt"
REGISTRY = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test asset {path} is missing: the tests need ../shared beside the checkout", pytrace=False)
    return path


def tiny_config(model: str, **overrides: object) -> DetectorConfig:
    """Random weights, small inputs, CPU: fast enough for a 2-core machine."""
    values = {"model": model, "weights": "random", "min_size": 128, "max_size": 160, "device": "cpu"}
    values.update(overrides)
    return load_config(None, values)


def match_share(a: Detections, b: Detections, iou: float = 0.95, top: int = 50) -> float:
    """The share of ``a``'s ``top`` highest-scoring boxes that ``b`` has too: same label, IoU >= ``iou``.

    Comparing two runs of one model as sets rather than element by element: a batch may round
    differently from one image alone (the BLAS blocking of the box head's matrix products
    depends on how many proposals it gets, and on the CPU's vector width), and random weights
    give many near-tied scores, so a tiny difference can swap two boxes' order or which box
    makes the 100-box cap."""
    order = np.argsort(-a.scores, kind="stable")[:top]
    if len(order) == 0:
        return 1.0 if len(b) == 0 else 0.0
    area_b = (b.boxes[:, 2] - b.boxes[:, 0]) * (b.boxes[:, 3] - b.boxes[:, 1])
    hits = 0
    for i in order:
        x1, y1, x2, y2 = a.boxes[i]
        w = np.clip(np.minimum(x2, b.boxes[:, 2]) - np.maximum(x1, b.boxes[:, 0]), 0, None)
        h = np.clip(np.minimum(y2, b.boxes[:, 3]) - np.maximum(y1, b.boxes[:, 1]), 0, None)
        union = (x2 - x1) * (y2 - y1) + area_b - w * h
        overlap = w * h / np.maximum(union, 1e-9)
        hits += bool(((overlap >= iou) & (b.labels == a.labels[i])).any())
    return hits / len(order)


def assert_same_detections(a: Detections, b: Detections) -> None:
    """``b`` is ``a`` up to float rounding (see :func:`match_share`)."""
    assert abs(len(a) - len(b)) <= max(2, len(a) // 10), (len(a), len(b))
    assert match_share(a, b) >= 0.9 and match_share(b, a) >= 0.9


def read_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(need(path)))
    frames, i = [], 0
    try:
        while i <= max(indices):
            ok, frame = cap.read()
            assert ok, f"{path} ended before frame {i}"
            if i in indices:
                frames.append(frame)
            i += 1
    finally:
        cap.release()
    return frames


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video, decoded in order by OpenCV."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        cap.release()


def frames_in(path: Path) -> int:
    """How many frames OpenCV decodes from a video (not the container's count)."""
    cap = cv2.VideoCapture(str(path))
    try:
        n = 0
        while cap.read()[0]:
            n += 1
        return n
    finally:
        cap.release()


@pytest.fixture(scope="session")
def video_frames() -> list[np.ndarray]:
    """Frames 0, 100 and 200 of the real pedestrian clip (768x576 BGR)."""
    return read_frames(VIDEO, [0, 100, 200])


@pytest.fixture(scope="session")
def small_frame(video_frames: list[np.ndarray]) -> np.ndarray:
    return cv2.resize(video_frames[0], (160, 120), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def torchscript_detector() -> Detector:
    return Detector.from_config(load_config(None, {"model": str(need(TORCHSCRIPT)), "device": "cpu"}))


@pytest.fixture(autouse=True)
def _isolate_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test downloads or reads the user's real caches."""
    monkeypatch.setenv("DETECTOR_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("DETECTOR_WEIGHTS_DIR", str(tmp_path / "no_weights_here"))
    monkeypatch.delenv("DETECTOR_WEIGHTS_MIRROR", raising=False)
    torch.manual_seed(0)
