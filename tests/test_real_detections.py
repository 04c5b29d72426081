"""Real detections from the COCO-trained TorchScript model in ../shared."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector import Detector
from detector.io.sources import read_image

from .conftest import COCO_MINI, need


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_finds_pedestrians_in_the_real_video(torchscript_detector: Detector, video_frames: list[np.ndarray]) -> None:
    for frame in video_frames:
        dets = torchscript_detector(frame).filter(min_score=0.5, classes=["person"])
        assert len(dets) >= 2, f"expected pedestrians, got {torchscript_detector(frame)}"
        h, w = frame.shape[:2]
        sizes = dets.boxes[:, 2:] - dets.boxes[:, :2]
        assert (sizes[:, 1] > sizes[:, 0]).mean() >= 0.5, "standing people are taller than wide"
        assert (dets.boxes[:, 2] <= w).all() and (dets.boxes[:, 3] <= h).all()


@pytest.fixture(scope="module")
def coco_gt() -> dict:
    return json.loads(need(COCO_MINI / "annotations" / "instances_val2017.json").read_text())


def test_matches_coco_ground_truth(torchscript_detector: Detector, coco_gt: dict) -> None:
    """On 12 real COCO images, about half the confident detections (46/80 when written) land on a
    ground-truth box of their class at IoU 0.5; untrained weights land none."""
    by_image: dict[int, list[dict]] = {}
    for ann in coco_gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted(coco_gt["images"], key=lambda im: im["id"])[:12]
    hits = total = 0
    for im in images:
        frame = read_image(COCO_MINI / "val2017" / im["file_name"])
        assert frame is not None and frame.shape[:2] == (im["height"], im["width"])
        dets = torchscript_detector(frame).filter(min_score=0.6)
        for box, label in zip(dets.boxes, dets.labels, strict=True):
            total += 1
            gts = [a for a in by_image.get(im["id"], []) if a["category_id"] == label]
            gt_boxes = [np.array([x, y, x + w, y + h]) for x, y, w, h in (a["bbox"] for a in gts)]
            hits += any(iou(box, g) >= 0.5 for g in gt_boxes)
    assert total >= 20, f"too few confident detections ({total}) on 12 COCO images"
    assert hits / total >= 0.45, f"only {hits}/{total} confident detections match ground truth"


def test_batches_work_with_a_one_image_per_call_model(
    torchscript_detector: Detector, video_frames: list[np.ndarray]
) -> None:
    """The D2Go TorchScript export answers one image per call; batches still give one result per frame."""
    batch = torchscript_detector(video_frames[:2])
    singles = [torchscript_detector(f) for f in video_frames[:2]]
    assert len(batch) == 2
    for b, s in zip(batch, singles, strict=True):
        np.testing.assert_array_equal(b.boxes, s.boxes)
        np.testing.assert_array_equal(b.labels, s.labels)
