"""``Detections``: the one result type shared by the video and evaluation paths."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
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
        known = [n for n in self.class_names if n not in UNUSED_NAMES]
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
                close = difflib.get_close_matches(wanted, [n.lower() for n in known], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
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
