"""Reliability items: readable tags, clear errors for bad frames, no crash when a source is
closed under its reader, eval data checks that warn instead of silently moving AP."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import Detections, Detector, annotate
from detector.eval import load_dataset
from detector.eval.scoring import validate_results
from detector.render.annotators import LabelAnnotator

from .conftest import COCO_MINI, DEMO, ROOT, need
from .test_pipeline import Tiny


def test_overlapping_tags_stay_apart_and_inside_the_frame() -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    boxes = [[50, 60, 150, 200], [52, 62, 148, 198], [55, 58, 140, 190], [0, 0, 320, 240], [300, 230, 319, 239]]
    dets = Detections(np.array(boxes, np.float32), np.array([0.9, 0.8, 0.7, 0.6, 0.95], np.float32),
                      np.array([1, 1, 3, 1, 2]))  # fmt: skip
    tags = LabelAnnotator().layout(frame, dets)
    assert [t.index for t in tags] == [4, 0, 1, 2, 3], "the most confident detection is placed first"
    for t in tags:
        x1, y1, x2, y2 = t.rect
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240, f"tag {t.text!r} leaves the frame: {t.rect}"
    first_four = [t.rect for t in tags[:4]]  # each has four spots; with 4 tags on near-equal boxes all fit
    for i, a in enumerate(first_four):
        for b in first_four[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), f"tags overlap: {a} {b}"
    assert annotate(frame, dets).any()


def test_bad_frames_get_clear_errors() -> None:
    detector = Detector(Tiny())
    with pytest.raises(TypeError, match="frame is None"):
        detector(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="frame is None"):
        detector([None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        detector(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        detector(torch.zeros(3, 0, 5))
    with pytest.raises(ValueError, match="uint8"):
        annotate(np.zeros((8, 8, 3), np.float32), Detections.empty())


def test_class_filter_is_case_insensitive_and_checks_ids() -> None:
    dets = Detections.empty()
    assert dets.label_ids(["Person", " CAR "]) == {1, 3}
    with pytest.raises(ValueError, match="did you mean 'person'"):
        dets.label_ids(["persn"])
    with pytest.raises(ValueError, match="ids run 1..90"):
        dets.label_ids(["999"])
    with pytest.raises(ValueError, match="unknown class id 12"):  # an N/A slot of COCO's 91
        dets.label_ids([12])


def test_closing_the_source_under_a_kept_stream_does_not_crash(tmp_path: Path) -> None:
    """The caller keeps the generator, breaks out and leaves the source's ``with``: the capture must
    not be released under the reader thread (this crashed the interpreter)."""
    script = textwrap.dedent(f"""
        import time
        from detector import Detector
        from detector.io import open_source
        from detector.pipeline import stream
        from tests.test_pipeline import Tiny

        detector = Detector(Tiny())
        for _ in range(5):
            with open_source({str(DEMO)!r}) as source:
                gen = stream(detector, source, queue_size=1)
                for i, _ in enumerate(gen):
                    if i == 3:
                        break
            time.sleep(0.05)
            gen.close()
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])


def _gt() -> dict:
    return json.loads(need(COCO_MINI / "annotations" / "instances_val2017.json").read_text())


def test_orphan_annotations_are_counted_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _gt()
    data["annotations"][0] = {**data["annotations"][0], "image_id": 987654321}
    data["annotations"][1] = {**data["annotations"][1], "category_id": 999}
    data["annotations"][2] = {**data["annotations"][2], "category_id": 999}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    caplog.set_level(logging.WARNING)
    load_dataset(path)
    assert "1 annotation(s) name an image id that is not in 'images'" in caplog.text
    assert "2 annotation(s) name a category id that is not in 'categories'" in caplog.text


def test_xyxy_results_get_a_hint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset = load_dataset(need(COCO_MINI / "annotations" / "instances_val2017.json"))
    gt = dataset.coco.dataset["annotations"]
    as_xywh = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt if not a["iscrowd"]]  # fmt: skip
    caplog.set_level(logging.WARNING)
    validate_results(as_xywh, dataset.coco, "good.json")
    assert "x1, y1, x2, y2" not in caplog.text
    as_xyxy = [{**r, "bbox": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]}
               for r in as_xywh]  # fmt: skip
    validate_results(as_xyxy, dataset.coco, "xyxy.json")
    assert "not [x1, y1, x2, y2]" in caplog.text
