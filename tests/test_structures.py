from __future__ import annotations

import json

import numpy as np
import pytest

from detector import Detections
from detector.categories import COCO_CLASS_NAMES, coco_category_ids


def make() -> Detections:
    return Detections(
        boxes=np.array([[10, 20, 50, 80], [0, 0, 5, 5], [100, 100, 200, 150]], dtype=np.float64),
        scores=[0.9, 0.3, 0.6],
        labels=[1, 3, 1],
    )


def test_dtypes_and_shapes_are_normalised() -> None:
    d = make()
    assert d.boxes.dtype == np.float32 and d.boxes.shape == (3, 4)
    assert d.scores.dtype == np.float32 and d.labels.dtype == np.int64
    assert d.names == ["person", "car", "person"]
    assert len(Detections.empty()) == 0 and Detections.empty().boxes.shape == (0, 4)


def test_length_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Detections(np.zeros((2, 4)), [0.1], [1, 2])


def test_indexing_by_int_slice_and_mask() -> None:
    d = make()
    assert len(d[0]) == 1 and d[0].labels.tolist() == [1]
    assert d[1:].scores.tolist() == pytest.approx([0.3, 0.6])
    assert d[d.scores > 0.5].labels.tolist() == [1, 1]
    assert d[np.array([2, 0])].scores.tolist() == pytest.approx([0.6, 0.9])


def test_filter_by_score_and_class() -> None:
    d = make()
    assert d.filter(min_score=0.5).scores.tolist() == pytest.approx([0.9, 0.6])
    assert d.filter(classes=["car"]).labels.tolist() == [3]
    assert d.filter(min_score=0.7, classes=["person", 3]).scores.tolist() == pytest.approx([0.9])
    assert d.filter() is d
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        d.filter(classes=["unicorn"])


def test_to_coco_is_xywh_with_category_mapping() -> None:
    d = make()
    entries = d.to_coco(image_id=42)
    assert entries[0] == {
        "image_id": 42,
        "category_id": 1,
        "bbox": [10.0, 20.0, 40.0, 60.0],
        "score": pytest.approx(0.9),
    }
    assert [e["category_id"] for e in entries] == [1, 3, 1]
    # contiguous labels of a custom model mapped to COCO ids
    mapped = d.to_coco(7, category_ids=[0, 1, 2, 3])
    assert [e["category_id"] for e in mapped] == [1, 3, 1]
    json.dumps(entries)  # plain Python types only


def test_to_dict_is_json_ready() -> None:
    rows = make().to_dict()
    assert rows[0] == {"box": [10.0, 20.0, 50.0, 80.0], "score": 0.9, "label": 1, "name": "person"}
    json.dumps(rows)


def test_coco_table() -> None:
    ids = coco_category_ids()
    assert len(COCO_CLASS_NAMES) == 91 and len(ids) == 80
    assert ids[0] == 1 and ids[-1] == 90 and COCO_CLASS_NAMES[90] == "toothbrush"
