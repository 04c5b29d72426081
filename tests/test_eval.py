"""COCO evaluation: exact agreement with plain pycocotools, synthetic truths, bad input, API, torchrun."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector import Detections, Detector, load_config
from detector.cli import main
from detector.eval import METRIC_KEYS, CocoEvaluator, EvalReport, load_dataset, score
from detector.eval.dataset import DatasetError

from .conftest import COCO_MINI, TORCHSCRIPT, need

ANN = COCO_MINI / "annotations" / "instances_val2017.json"
IMAGES = COCO_MINI / "val2017"


def plain_pycocotools(ann_file: Path, results: list[dict], img_ids: list[int] | None = None) -> tuple[np.ndarray, str]:
    """The reference: exactly what a user would write with pycocotools."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO(str(ann_file))
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    return ev.stats, summary.getvalue()


@pytest.fixture(scope="module")
def mini_report() -> EvalReport:
    """The TorchScript model over all 80 images with no score threshold, as in ../shared/README.md."""
    detector = Detector.from_config(load_config(None, {"model": str(need(TORCHSCRIPT)), "score_threshold": 0.0}))
    dataset = load_dataset(need(ANN), need(IMAGES))
    return CocoEvaluator(dataset, class_names=detector.class_names).evaluate(detector, progress=False)


def test_coco_mini_equals_plain_pycocotools(mini_report: EvalReport) -> None:
    stats, summary = plain_pycocotools(ANN, mini_report.results)
    assert [mini_report.metrics[k] for k in METRIC_KEYS] == [float(v) for v in stats]  # bit for bit
    assert mini_report.scores.summary == summary  # the same printed digits
    # the reference figures in ../shared/README.md
    m = mini_report.metrics
    assert (round(m["AP"], 3), round(m["AP50"], 3), round(m["AP75"], 3), round(m["AR100"], 3)) == (
        0.202, 0.327, 0.206, 0.271,
    )  # fmt: skip
    assert mini_report.images == 80 and mini_report.speed is not None and mini_report.speed.images == 80


def test_per_class_ap_agrees_with_pycocotools_per_category(mini_report: EvalReport) -> None:
    """Per-class AP equals pycocotools run on that one category."""
    by_name = {c.name: c for c in mini_report.scores.per_class}
    for name in ("person", "dog", "car"):
        c = by_name[name]
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(ANN))
            ev = COCOeval(gt, gt.loadRes([dict(r) for r in mini_report.results]), "bbox")
            ev.params.catIds = [c.category_id]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert c.ap == pytest.approx(ev.stats[0], abs=1e-12)
        assert c.ap50 == pytest.approx(ev.stats[1], abs=1e-12)
    assert by_name["person"].ground_truth > 100


def test_faster_backend_gives_the_same_numbers(mini_report: EvalReport) -> None:
    dataset = load_dataset(ANN)
    fast = score(dataset.coco, mini_report.results, dataset.image_ids, backend="faster-coco-eval")
    for key in METRIC_KEYS:
        assert fast.metrics[key] == pytest.approx(mini_report.metrics[key], abs=1e-9), key


# -- synthetic ground truth --------------------------------------------------


def synthetic(tmp_path: Path, *, iscrowd: bool = True) -> Path:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for img_id in range(1, 6):
        images.append({"id": img_id, "file_name": f"{img_id}.jpg", "width": 640, "height": 480})
        for _ in range(4):
            x, y = rng.uniform(0, 400), rng.uniform(0, 300)
            w, h = rng.uniform(20, 200), rng.uniform(20, 150)
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": int(rng.choice([1, 3, 7])),
                   "bbox": [x, y, w, h], "area": w * h}  # fmt: skip
            if iscrowd:
                ann["iscrowd"] = 0
            anns.append(ann)
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def gt_as_results(ann_file: Path) -> list[dict]:
    data = json.loads(ann_file.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in data["annotations"]]  # fmt: skip


def test_ground_truth_as_predictions_scores_one(tmp_path: Path) -> None:
    ann = synthetic(tmp_path)
    dataset = load_dataset(ann)
    s = score(dataset.coco, gt_as_results(ann), dataset.image_ids)
    assert s.metrics["AP"] == 1.0 and s.metrics["AP50"] == 1.0 and s.metrics["AR100"] == 1.0
    assert all(c.ap == 1.0 for c in s.per_class)


def test_empty_predictions_score_zero(tmp_path: Path) -> None:
    dataset = load_dataset(synthetic(tmp_path))
    s = score(dataset.coco, [], dataset.image_ids)
    assert s.metrics["AP"] == 0.0 and s.metrics["AR100"] == 0.0
    assert all(v in (0.0, -1.0) for v in s.metrics.values())


def test_missing_iscrowd_is_treated_as_zero(tmp_path: Path) -> None:
    with_flag = synthetic(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path)
    without = synthetic(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path, iscrowd=False)
    results = gt_as_results(with_flag)[::2]
    a, b = load_dataset(with_flag), load_dataset(without)
    assert score(a.coco, results, a.image_ids).metrics == score(b.coco, results, b.image_ids).metrics


def test_evaluator_api_with_contiguous_labels(tmp_path: Path) -> None:
    """A custom model whose labels are 0..2 (background, car, person) maps to the dataset's ids by name."""
    ann = synthetic(tmp_path)
    dataset = load_dataset(ann)
    names = ("__background__", "car", "person")  # no "train": those detections cannot be scored and are dropped
    evaluator = CocoEvaluator(dataset, class_names=names)
    by_image: dict[int, list[dict]] = {}
    for a in json.loads(ann.read_text())["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    label_of = {3: 1, 1: 2}
    for img_id in dataset.image_ids:
        anns = [a for a in by_image[img_id] if a["category_id"] in label_of]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        labels = [label_of[a["category_id"]] for a in anns]
        evaluator.process([img_id], [Detections(boxes, np.ones(len(anns)), labels, names)])
    report = evaluator.evaluate()
    assert {r["category_id"] for r in report.results} <= {1, 3}
    per = {c.name: c.ap for c in report.scores.per_class}
    assert per["person"] == pytest.approx(1.0) and per["car"] == pytest.approx(1.0)
    assert per["train"] in (0.0, -1.0)
    evaluator.reset()
    assert evaluator.results == []
    with pytest.raises(DatasetError, match="none of the model's classes"):
        CocoEvaluator(dataset, class_names=("__background__", "zebra"))


# -- command line ------------------------------------------------------------


def test_cli_eval_and_results_scoring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    code = main(["-q", "eval", "--images", str(IMAGES), "--annotations", str(ANN), "--model", str(TORCHSCRIPT),
                 "--out", str(out), "--limit", "6", "--batch-size", "2"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed
    assert "per-class AP" in printed and "images/s" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics) and metrics["images"] == 6
    assert set(metrics["speed"]) >= {"model_ms_per_image", "total_ms_per_image", "images_per_second"}
    assert len(metrics["per_class"]) == 80
    results = json.loads((out / "results.json").read_text())
    ids = sorted(json.loads(ANN.read_text())["images"], key=lambda i: i["id"])[:6]
    stats, _ = plain_pycocotools(ANN, results, [i["id"] for i in ids])
    assert [metrics[k] for k in METRIC_KEYS] == [float(v) for v in stats]
    for png in ("pr_overall.png", "pr_classes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| person | 1 |" in (out / "report.md").read_text()
    # scoring the written results file gives the same numbers
    out2 = tmp_path / "rescored"
    assert main(["-q", "eval", "--results", str(out / "results.json"), "--annotations", str(ANN),
                 "--limit", "6", "--out", str(out2)]) == 0  # fmt: skip
    rescored = json.loads((out2 / "metrics.json").read_text())
    assert [rescored[k] for k in METRIC_KEYS] == [metrics[k] for k in METRIC_KEYS]
    assert not (out2 / "results.json").exists()


def eval_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["-q", "eval", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = synthetic(tmp_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [}')
    assert "not valid JSON (line 1" in eval_error(capsys, "--annotations", str(bad_json), "--results", str(ann))
    no_keys = tmp_path / "nokeys.json"
    no_keys.write_text(json.dumps({"images": [], "categories": []}))
    assert "lacks the list(s) annotations" in eval_error(capsys, "--annotations", str(no_keys), "--results", str(ann))
    no_bbox = tmp_path / "nobbox.json"
    data = json.loads(ann.read_text())
    del data["annotations"][0]["bbox"]
    no_bbox.write_text(json.dumps(data))
    assert "lacks required key(s) bbox" in eval_error(capsys, "--annotations", str(no_bbox), "--results", str(ann))

    results = tmp_path / "res.json"
    results.write_text(json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    assert "not in the ground truth (e.g. 999)" in eval_error(
        capsys, "--annotations", str(ann), "--results", str(results)
    )
    results.write_text(json.dumps([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    assert "category id(s) 2 are not in" in eval_error(capsys, "--annotations", str(ann), "--results", str(results))
    results.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 5, 5]}]))
    assert "needs image_id, category_id" in eval_error(capsys, "--annotations", str(ann), "--results", str(results))

    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(sorted(IMAGES.glob("*.jpg"))[0], images / "1.jpg")
    line = eval_error(capsys, "--annotations", str(ann), "--images", str(images), "--model", str(TORCHSCRIPT))
    assert "4 image(s) listed in gt.json are missing" in line and "2.jpg, 3.jpg, 4.jpg and 1 more" in line

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert "lists no images" in eval_error(capsys, "--annotations", str(empty), "--results", str(ann))
    assert "give --images" in eval_error(capsys, "--annotations", str(ann))


def test_two_process_torchrun_equals_single_process(tmp_path: Path) -> None:
    args = ["eval", "--images", str(IMAGES), "--annotations", str(ANN), "--model", str(TORCHSCRIPT), "--limit", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "detector", "-q", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    multi = subprocess.run([*torchrun, "-m", "detector", "-q", *args, "--out", str(tmp_path / "two")],
                           capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [one[k] for k in METRIC_KEYS] == [two[k] for k in METRIC_KEYS]
    assert one["per_class"] == two["per_class"] and two["images"] == 8
    assert json.loads((tmp_path / "one" / "results.json").read_text()) == json.loads(
        (tmp_path / "two" / "results.json").read_text()
    )
    assert multi.stdout.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 1  # rank 0 reports
