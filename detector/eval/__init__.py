"""COCO evaluation: dataset reader, evaluator (reset / process / evaluate), scoring, report."""

from .dataset import CocoDataset, DatasetError, load_dataset
from .evaluator import CocoEvaluator, EvalReport, evaluate
from .scoring import METRIC_KEYS, Scores, score

__all__ = [
    "METRIC_KEYS",
    "CocoDataset",
    "CocoEvaluator",
    "DatasetError",
    "EvalReport",
    "Scores",
    "evaluate",
    "load_dataset",
    "score",
]
