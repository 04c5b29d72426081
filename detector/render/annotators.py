"""Composable OpenCV annotators: ``annotator(frame, detections) -> frame``.

Each draws in place on the frame it is given and returns it; :func:`annotate`
copies first unless told not to. Sizes scale with the frame so overlays stay
readable from 320x240 to 4K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from ..structures import Detections
from .palette import class_color, text_color_on

FONT = cv2.FONT_HERSHEY_SIMPLEX


class Annotator(Protocol):
    def __call__(self, frame: np.ndarray, detections: Detections) -> np.ndarray: ...


def line_thickness(frame: np.ndarray) -> int:
    """About 0.25% of the frame's mean side, at least 1 px (2 px at 768x576, 4 at 1080p)."""
    h, w = frame.shape[:2]
    return max(1, round(0.0025 * (h + w) / 2 + 0.5))


def font_scale(frame: np.ndarray) -> float:
    h, w = frame.shape[:2]
    return max(0.35, min(h, w) / 1200)


def _draw_order(detections: Detections) -> np.ndarray:
    """Lowest scores first, so the most confident boxes end up on top."""
    return np.argsort(detections.scores, kind="stable")


@dataclass
class BoxAnnotator:
    """Box outlines in the class colour (axis-aligned at whole pixels: no antialiasing needed)."""

    thickness: int | None = None

    def __call__(self, frame: np.ndarray, detections: Detections) -> np.ndarray:
        t = self.thickness or line_thickness(frame)
        boxes = np.round(detections.boxes).astype(np.int32)
        for i in _draw_order(detections):
            x1, y1, x2, y2 = (int(v) for v in boxes[i])
            cv2.rectangle(frame, (x1, y1), (x2, y2), class_color(int(detections.labels[i])), t, cv2.LINE_8)
        return frame


@dataclass
class LabelAnnotator:
    """``name score`` on a filled tag in the class colour, above the box (inside it at the top edge)."""

    scale: float | None = None
    show_score: bool = True

    def __call__(self, frame: np.ndarray, detections: Detections) -> np.ndarray:
        scale = self.scale or font_scale(frame)
        thick = max(1, round(scale * 1.6))
        h, w = frame.shape[:2]
        names = detections.names
        for i in _draw_order(detections):
            text = f"{names[i]} {detections.scores[i]:.2f}" if self.show_score else names[i]
            (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
            pad = max(2, thick + 1)
            x1, y1 = (int(round(v)) for v in detections.boxes[i, :2])
            x1 = min(max(x1, 0), max(0, w - tw - 2 * pad))
            top = y1 - th - base - 2 * pad
            if top < 0:  # no room above: draw inside the box
                top = max(y1, 0)
            top = min(top, max(0, h - th - base - 2 * pad))
            color = class_color(int(detections.labels[i]))
            cv2.rectangle(frame, (x1, top), (x1 + tw + 2 * pad, top + th + base + 2 * pad), color, -1)
            cv2.putText(frame, text, (x1 + pad, top + pad + th), FONT, scale, text_color_on(color), thick, cv2.LINE_AA)
        return frame


DEFAULT_ANNOTATORS: tuple[Annotator, ...] = (BoxAnnotator(), LabelAnnotator())


def annotate(
    frame: np.ndarray,
    detections: Detections,
    annotators: Sequence[Annotator] = DEFAULT_ANNOTATORS,
    *,
    copy: bool = True,
) -> np.ndarray:
    """Run ``annotators`` in order on ``frame`` (a copy unless ``copy=False``)."""
    out = frame.copy() if copy else frame
    for annotator in annotators:
        out = annotator(out, detections)
    return out
