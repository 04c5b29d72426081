"""Scoring COCO results against ground truth with the official pycocotools
(or faster-coco-eval, which gives the same numbers), plus per-class AP."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .dataset import DatasetError, coco_from_dict, is_number, quote_json

log = logging.getLogger(__name__)

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster-coco-eval")


@dataclass(frozen=True)
class ClassAP:
    category_id: int
    name: str
    ap: float
    """AP@[.50:.95], area all, 100 detections; -1 when the class has no ground truth."""
    ap50: float
    ground_truth: int
    """Non-crowd ground-truth boxes of the class among the evaluated images."""


@dataclass
class Scores:
    metrics: dict[str, float]
    summary: str
    """pycocotools' own printed summary, verbatim."""
    per_class: list[ClassAP]
    backend: str
    seconds: float
    precision: np.ndarray = field(repr=False)
    """COCOeval's precision array [IoU T, recall R, class K, area A, maxDets M]."""
    recall_thresholds: np.ndarray = field(repr=False)
    iou_thresholds: np.ndarray = field(repr=False)


def validate_results(results: Any, gt: COCO, source: str) -> list[dict[str, Any]]:
    """Check a COCO results list against the ground truth; one-line errors for what pycocotools
    would reject with an assertion (unknown images) or silently ignore (unknown categories)."""
    if not isinstance(results, list):
        raise DatasetError(f"{source} must be a JSON list of detections (COCO results format)")
    for i, row in enumerate(results):
        if not isinstance(row, dict) or any(k not in row for k in ("image_id", "category_id", "bbox", "score")):
            raise DatasetError(
                f"{source}: every detection needs image_id, category_id, bbox and score; got {quote_row(row)}"
            )
        why = _bad_row(row)
        if why:
            raise DatasetError(f"{source}: detection {i} {why}: {quote_row(row)}; fix the file")
    unknown_images = sorted({r["image_id"] for r in results} - set(gt.imgs))
    if unknown_images:
        raise DatasetError(
            f"{source}: {len(unknown_images)} image id(s) are not in the ground truth "
            f"(e.g. {', '.join(map(str, unknown_images[:3]))}); score against the annotations they were made for"
        )
    unknown_cats = sorted({r["category_id"] for r in results} - set(gt.cats))
    if unknown_cats:
        raise DatasetError(
            f"{source}: category id(s) {', '.join(map(str, unknown_cats[:5]))} are not in the ground truth; "
            "map the model's labels to the dataset's category ids"
        )
    _warn_if_xyxy(results, gt, source)
    return results


ROW_KEYS = ("image_id", "category_id", "bbox", "score")


def quote_row(row: Any, limit: int = 100) -> str:
    """A results row as its file spells it (JSON: ``NaN``, ``Infinity``), for an error line: a dict
    shows ``image_id``, ``category_id``, ``bbox`` and ``score`` first, other keys as ``...``; a value
    longer than ``limit`` is abbreviated with ``...`` between whole items, never inside a number."""
    if not isinstance(row, dict):
        return quote_json(row, limit)
    shown = [k for k in ROW_KEYS if k in row]
    items = [f"{json.dumps(str(k))}: {quote_json(row[k], limit)}" for k in shown]
    if len(row) > len(shown):
        items.append("...")
    return "{" + ", ".join(items) + "}"


def _bad_row(row: dict[str, Any]) -> str | None:
    """What is wrong with one results row, or None."""
    for key in ("image_id", "category_id"):
        if not isinstance(row[key], int) or isinstance(row[key], bool):
            return f"has {key} {row[key]!r}; it must be an integer"
    bbox = row["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return "has a bbox that is not [x, y, width, height]"
    if not all(is_number(v) for v in bbox):
        return "has a bbox value that is not a finite number"
    if bbox[2] < 0 or bbox[3] < 0:
        return "has a negative bbox width or height (bbox is [x, y, width, height])"
    if not is_number(row["score"]):
        return "has a score that is not a finite number"
    return None


def _warn_if_xyxy(results: list[dict[str, Any]], gt: COCO, source: str) -> None:
    """Boxes given as [x1, y1, x2, y2] score near zero with no error: warn when most of them run
    past the image edge read as [x, y, width, height], which xywh boxes from a detector never do."""
    past = checked = 0
    for row in results:
        img = gt.imgs.get(row["image_id"], {})
        w, h = img.get("width"), img.get("height")
        if not (is_number(w) and is_number(h)):
            continue
        x, y, bw, bh = row["bbox"]
        checked += 1
        past += x + bw > 1.02 * w or y + bh > 1.02 * h
    if checked >= 10 and past > 0.25 * checked:
        log.warning(
            "%s: %d of %d boxes run past the image edge when read as [x, y, width, height]; "
            "COCO results need [x, y, width, height] boxes, not [x1, y1, x2, y2]",
            source,
            past,
            checked,
        )


def _load_results(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    if not results:  # pycocotools' loadRes fails on an empty list; no detections scores 0
        return coco_from_dict(
            {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(r) for r in results])  # loadRes adds keys in place: give it copies


def _evaluate(gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int], backend: str) -> tuple[Any, str]:
    if backend == "pycocotools":
        evaluator = COCOeval(gt, _load_results(gt, results), "bbox")
    elif backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError:
            raise DatasetError("backend faster-coco-eval is not installed; pip install faster-coco-eval") from None
        with contextlib.redirect_stdout(io.StringIO()):
            fast_gt = FastCOCO(gt.dataset)
            fast_dt = (
                fast_gt.loadRes([dict(r) for r in results])
                if results
                else FastCOCO(
                    {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
                )
            )
        evaluator = COCOeval_faster(fast_gt, fast_dt, "bbox", print_function=print)
    else:
        raise DatasetError(f"unknown scoring backend {backend!r}; use one of {', '.join(BACKENDS)}")
    evaluator.params.imgIds = list(image_ids)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return evaluator, summary.getvalue()


def score(gt: COCO, results: list[dict[str, Any]], image_ids: Sequence[int], backend: str = "pycocotools") -> Scores:
    """The 12 COCO numbers exactly as ``COCOeval(gt, gt.loadRes(results), "bbox")`` gives them."""
    start = time.perf_counter()
    evaluator, summary = _evaluate(gt, results, image_ids, backend)
    stats = [float(v) for v in evaluator.stats[:12]]  # faster-coco-eval appends AR@.50 and AR@.75
    precision = np.asarray(evaluator.eval["precision"])
    params = evaluator.params
    image_set = set(image_ids)
    gt_counts = Counter(
        a["category_id"] for a in gt.dataset["annotations"] if not a.get("iscrowd", 0) and a["image_id"] in image_set
    )
    per_class = []
    for k, cat_id in enumerate(params.catIds):
        p_all = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        per_class.append(
            ClassAP(
                int(cat_id),
                str(gt.cats[cat_id]["name"]),
                float(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else -1.0,
                float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else -1.0,
                gt_counts.get(cat_id, 0),
            )
        )
    return Scores(
        metrics=dict(zip(METRIC_KEYS, stats, strict=True)),
        summary=summary,
        per_class=per_class,
        backend=backend,
        seconds=time.perf_counter() - start,
        precision=precision,
        recall_thresholds=np.asarray(params.recThrs),
        iou_thresholds=np.asarray(params.iouThrs),
    )


def score_results_file(gt: COCO, path: Path, image_ids: Sequence[int], backend: str = "pycocotools") -> Scores:
    from .dataset import read_json

    results = validate_results(read_json(path, "results"), gt, str(path))
    return score(gt, results, image_ids, backend)
