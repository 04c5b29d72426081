"""``Detections``: the one result type shared by the video and evaluation paths."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .categories import COCO_CLASS_NAMES, UNUSED_NAMES, label_name


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one frame: ``boxes`` xyxy float32 (N, 4) in input pixels,
    ``scores`` float32 (N,), ``labels`` int64 (N,), and the label-to-name table
    ``class_names`` (shared between frames, not copied)."""

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...] = field(default=COCO_CLASS_NAMES, repr=False)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"boxes, scores and labels differ in length: {len(boxes)}, {len(scores)}, {len(labels)}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = COCO_CLASS_NAMES) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), class_names)

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[tuple[npt.NDArray[np.float32], float, int, str]]:
        """Rows ``(box xyxy, score, label, name)``, most useful in a loop:
        ``for box, score, label, name in dets``."""
        for box, score, label in zip(self.boxes, self.scores.tolist(), self.labels.tolist(), strict=True):
            yield box, score, label, label_name(self.class_names, label)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(
            "Detections is not one array: use dets.boxes (N, 4 xyxy), dets.scores or dets.labels, "
            "or np.hstack([dets.boxes, dets.scores[:, None]])"
        )

    @classmethod
    def from_torchvision(cls, output: Mapping[str, Any], class_names: tuple[str, ...] = COCO_CLASS_NAMES) -> Detections:
        """From one of torchvision's detection dicts (``boxes``, ``scores``, ``labels`` tensors)."""

        def arr(key: str) -> np.ndarray:
            value = output[key]
            return value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

        labels = output["labels"]
        labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
        return cls(arr("boxes"), arr("scores"), labels, class_names)

    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` (xyxy, confidence, class_id, ``data["class_name"]``).

        ``class_id`` keeps this model's label ids -- torchvision's COCO ids, so person is 1, not
        0 as in Ultralytics' 80-class numbering; the names travel in ``data["class_name"]``.
        """
        sv = _supervision()
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32),
            confidence=self.scores.astype(np.float32),
            class_id=self.labels.astype(int),
            data={"class_name": np.array(self.names, dtype=str)},
        )

    @classmethod
    def from_supervision(cls, detections: Any, class_names: tuple[str, ...] = COCO_CLASS_NAMES) -> Detections:
        """From a ``supervision.Detections``; missing confidences count as 1, missing class ids as 0."""
        n = len(detections)
        scores = detections.confidence if detections.confidence is not None else np.ones(n, np.float32)
        labels = detections.class_id if detections.class_id is not None else np.zeros(n, np.int64)
        return cls(detections.xyxy, scores, labels, class_names)

    def __getitem__(self, index: Any) -> Detections:
        """Select with an int, a slice, an index array or a boolean mask."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.boxes[index], self.scores[index], self.labels[index], self.class_names)

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, names={self.names[:5]}{'...' if len(self) > 5 else ''})"

    @property
    def names(self) -> list[str]:
        return [label_name(self.class_names, int(label)) for label in self.labels]

    def label_ids(self, classes: Iterable[str | int]) -> set[int]:
        """Label ids for class names (case-insensitive) or ids; raises ``ValueError`` naming an
        unknown class, with the closest known name or the range of valid ids."""
        ids: set[int] = set()
        for cls in classes:
            if isinstance(cls, (int, np.integer)) or (isinstance(cls, str) and cls.strip().isdigit()):
                label = int(cls)
                if not 0 <= label < len(self.class_names) or self.class_names[label] in UNUSED_NAMES:
                    valid = [i for i, n in enumerate(self.class_names) if n not in UNUSED_NAMES]
                    raise ValueError(f"unknown class id {label} (this model's ids run {valid[0]}..{valid[-1]})")
                ids.add(label)
                continue
            wanted = str(cls).strip().lower()
            matches = [i for i, name in enumerate(self.class_names) if name.lower() == wanted]
            if not matches:
                known = [n.lower() for n in self.class_names if n not in UNUSED_NAMES]
                close = difflib.get_close_matches(wanted, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known classes include {', '.join(known[:3])}"
                raise ValueError(f"unknown class {cls!r}{hint}")
            ids.update(matches)
        return ids

    def filter(self, min_score: float | None = None, classes: Iterable[str | int] | None = None) -> Detections:
        """Keep detections scoring at least ``min_score`` whose class is in ``classes``."""
        keep = np.ones(len(self), dtype=bool)
        if min_score is not None:
            keep &= self.scores >= min_score
        if classes is not None:
            keep &= np.isin(self.labels, list(self.label_ids(classes)))
        return self if keep.all() else self[keep]

    def to_coco(self, image_id: int, category_ids: Sequence[int] | np.ndarray | None = None) -> list[dict[str, Any]]:
        """COCO results entries (``bbox`` as xywh, values unrounded). ``category_ids[label]``
        maps labels to COCO ids for models whose labels are not COCO ids already."""
        xywh = self.boxes.astype(np.float64)
        xywh[:, 2:] -= xywh[:, :2]
        labels = self.labels if category_ids is None else np.asarray(category_ids)[self.labels]
        return [
            {"image_id": int(image_id), "category_id": c, "bbox": box, "score": s}
            for box, s, c in zip(xywh.tolist(), self.scores.tolist(), labels.tolist(), strict=True)
        ]

    def to_dict(self) -> list[dict[str, Any]]:
        """A JSON-ready list: one ``{"box", "score", "label", "name"}`` per detection."""
        return [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
                "label": int(label),
                "name": name,
            }
            for box, score, label, name in zip(self.boxes, self.scores, self.labels, self.names, strict=True)
        ]


def _supervision() -> Any:
    try:
        import supervision
    except ImportError:
        raise ImportError("supervision is not installed; pip install 'detector-rt[supervision]'") from None
    return supervision
