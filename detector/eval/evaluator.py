"""``CocoEvaluator``: ``reset / process / evaluate``, for training loops and for ``detector eval``.

``evaluate(detector, dataset)`` runs a detector over every image itself. When
``torch.distributed`` is initialised (e.g. under ``torchrun``), each process
takes every ``world_size``-th image and rank 0 gathers all results and scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..categories import UNUSED_NAMES
from ..distributed import Group
from ..io.sources import read_image
from ..predictor import Detector
from ..structures import Detections
from .dataset import CocoDataset, DatasetError
from .scoring import Scores, score


def category_map(class_names: Sequence[str], dataset_names: dict[int, str]) -> np.ndarray:
    """``map[label]`` = the dataset's category id of the class with that name, or -1.

    Matching by name serves COCO models on COCO (label == category id) and
    custom models with contiguous labels alike.
    """
    by_name: dict[str, int] = {}
    for cat_id, name in sorted(dataset_names.items()):
        by_name.setdefault(name, cat_id)
    mapping = np.array([by_name.get(name, -1) for name in class_names], dtype=np.int64)
    used = [n for n in class_names if n not in UNUSED_NAMES]
    if used and (mapping >= 0).sum() == 0:
        raise DatasetError(
            f"none of the model's classes ({', '.join(used[:4])}, ...) are categories of the dataset "
            f"({', '.join(list(by_name)[:4])}, ...); set class_names to the dataset's category names"
        )
    return mapping


@dataclass
class Speed:
    images: int = 0
    model_seconds: float = 0.0
    total_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {
            "model_ms_per_image": 1000 * self.model_seconds / n,
            "total_ms_per_image": 1000 * self.total_seconds / n,
            "images_per_second": self.images / self.total_seconds if self.total_seconds > 0 else 0.0,
        }


@dataclass
class EvalReport:
    scores: Scores
    model: str
    images: int
    speed: Speed | None = None
    results: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def metrics(self) -> dict[str, float]:
        return self.scores.metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.scores.metrics,
            "per_class": {c.name: c.ap for c in self.scores.per_class},
            "model": self.model,
            "images": self.images,
            "backend": self.scores.backend,
            "speed": {**(self.speed.as_dict() if self.speed else {}), "scoring_seconds": self.scores.seconds},
        }


def size_batches(ids: Sequence[int], sizes: Sequence[object], batch_size: int) -> list[list[int]]:
    """Consecutive ``ids`` in batches of up to ``batch_size`` images of one size (as the ground
    truth gives it): a batch of several sizes is padded to a common one, which changes results."""
    batches: list[list[int]] = []
    batch_sizes: list[object] = []
    for image_id, size in zip(ids, sizes, strict=True):
        if batches and len(batches[-1]) < batch_size and size == batch_sizes[-1]:
            batches[-1].append(image_id)
        else:
            batches.append([image_id])
            batch_sizes.append(size)
    return batches


class CocoEvaluator:
    """Collects detections per image and scores them against a COCO dataset."""

    def __init__(self, dataset: CocoDataset, *, class_names: Sequence[str] | None = None,
                 backend: str = "pycocotools") -> None:  # fmt: skip
        self.dataset = dataset
        self.backend = backend
        self._map = category_map(class_names, dataset.category_names) if class_names is not None else None
        self.results: list[dict[str, Any]] = []
        self.model_name = "results"

    def reset(self) -> None:
        self.results = []

    def process(self, image_ids: Sequence[int], detections: Sequence[Detections]) -> None:
        """Add one batch: ``detections[i]`` belongs to ``image_ids[i]``."""
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detections")
        for image_id, dets in zip(image_ids, detections, strict=True):
            if self._map is None:
                self._map = category_map(dets.class_names, self.dataset.category_names)
            keep = (dets.labels >= 0) & (dets.labels < len(self._map))
            keep[keep] = self._map[dets.labels[keep]] >= 0  # labels with no dataset category are dropped
            self.results.extend(dets[keep].to_coco(image_id, category_ids=self._map))

    def _load(self, image_ids: Sequence[int]) -> list[np.ndarray]:
        images = []
        for image_id in image_ids:
            image = read_image(self.dataset.image_path(image_id))
            if image is None:
                raise DatasetError(f"cannot decode image {self.dataset.image_path(image_id)}; replace or remove it")
            images.append(image)
        return images

    def run(self, detector: Detector, *, batch_size: int = 1, progress: bool = True) -> Speed:
        """Detect on this process's share of the images and ``process`` the results.

        The next batch is decoded in a helper thread while the model runs on
        this one (OpenCV releases the GIL while decoding).
        """
        group = Group()
        rank = group.rank
        ids = self.dataset.image_ids[rank :: group.size]
        imgs = self.dataset.coco.imgs
        batches = size_batches(ids, [(imgs[i].get("width"), imgs[i].get("height")) for i in ids], batch_size)
        speed = Speed()
        self.model_name = detector.name
        cuda = detector.device.type == "cuda"
        start = time.perf_counter()
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool,
            tqdm(total=len(ids), unit="img", disable=not progress or rank != 0, leave=False) as bar,
        ):
            pending = pool.submit(self._load, batches[0]) if batches else None
            for j, batch in enumerate(batches):
                assert pending is not None
                images = pending.result()
                pending = pool.submit(self._load, batches[j + 1]) if j + 1 < len(batches) else None
                tensors = detector.preprocess(images)
                if cuda:
                    torch.cuda.synchronize(detector.device)
                t0 = time.perf_counter()
                outputs = detector.forward(tensors)
                if cuda:
                    torch.cuda.synchronize(detector.device)
                speed.model_seconds += time.perf_counter() - t0
                self.process(batch, detector.postprocess(outputs))
                speed.images += len(batch)
                bar.update(len(batch))
        speed.total_seconds = time.perf_counter() - start
        return speed

    def gather(self) -> None:
        """Under torch.distributed, give every process all results (in single-process order)."""
        group = Group()
        if group.size == 1:
            return
        parts = group.all(self.results)
        order = {img: i for i, img in enumerate(self.dataset.image_ids)}
        merged = [row for part in parts for row in (part or [])]
        # a stable sort by image restores single-process order: each image's rows come from one rank
        self.results = sorted(merged, key=lambda r: order[r["image_id"]])

    def evaluate(self, detector: Detector | None = None, *, batch_size: int = 1, progress: bool = True) -> EvalReport:
        """Score what was processed; with ``detector``, first reset and run it over the dataset.

        Under torch.distributed every rank must call this; each gets the full report.
        """
        speed = None
        if detector is not None:
            self.reset()
            speed = self.run(detector, batch_size=batch_size, progress=progress)
            self.gather()
            speed = _gather_speed(speed)
        group = Group()  # rank 0 scores once; the others get its result
        scores = group.from_rank0(
            score(self.dataset.coco, self.results, self.dataset.image_ids, self.backend) if group.rank == 0 else None
        )
        assert scores is not None
        return EvalReport(scores, self.model_name, len(self.dataset), speed, self.results)


def _gather_speed(speed: Speed) -> Speed:
    """Every process's speed in one (object collectives work on every backend; NCCL refuses CPU tensors)."""
    got = Group().all(speed)
    # model time adds up over processes; wall time is the slowest process's
    return Speed(sum(p.images for p in got), sum(p.model_seconds for p in got), max(p.total_seconds for p in got))


def evaluate(detector: Detector, dataset: CocoDataset, *, batch_size: int = 1, backend: str = "pycocotools",
             progress: bool = True) -> EvalReport:  # fmt: skip
    """Run ``detector`` over ``dataset`` and score it."""
    evaluator = CocoEvaluator(dataset, class_names=detector.class_names, backend=backend)
    return evaluator.evaluate(detector, batch_size=batch_size, progress=progress)
