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
    """``name score`` on a filled tag in the class colour, above the box.

    Tags never leave the frame and avoid each other: the most confident
    detection is placed first, and each next tag takes the first free spot of
    above the box, inside its top edge, below it, or inside its bottom edge.
    Only when all four are taken does a tag overlap another, and then the more
    confident one is drawn on top.
    """

    scale: float | None = None
    show_score: bool = True

    def layout(self, frame: np.ndarray, detections: Detections) -> list[Tag]:
        """Where each tag goes, most confident first (rectangles are x1, y1, x2, y2, end-exclusive)."""
        scale = self.scale or font_scale(frame)
        thick = max(1, round(scale * 1.6))
        pad = max(2, thick + 1)
        h, w = frame.shape[:2]
        names = detections.names
        tags: list[Tag] = []
        for i in _draw_order(detections)[::-1]:  # most confident first: it gets the best spot
            text = f"{names[i]} {detections.scores[i]:.2f}" if self.show_score else names[i]
            (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
            tag_w, tag_h = tw + 2 * pad, th + base + 2 * pad
            x1, y1, _, y2 = (int(round(v)) for v in detections.boxes[i])
            left = min(max(x1, 0), max(0, w - tag_w))
            tops = [t for t in (y1 - tag_h, y1, y2, y2 - tag_h) if 0 <= t <= h - tag_h] or [
                min(max(y1 - tag_h, 0), max(0, h - tag_h))
            ]
            spots = [(left, t, left + tag_w, t + tag_h) for t in tops]
            free = [r for r in spots if not any(_overlaps(r, tag.rect) for tag in tags)]
            tags.append(Tag(int(i), text, (free or spots)[0], scale, thick, pad, th))
        return tags

    def __call__(self, frame: np.ndarray, detections: Detections) -> np.ndarray:
        for tag in reversed(self.layout(frame, detections)):  # least confident first: the best ends on top
            x0, y0, x1, y1 = tag.rect
            color = class_color(int(detections.labels[tag.index]))
            cv2.rectangle(frame, (x0, y0), (x1 - 1, y1 - 1), color, -1)
            cv2.putText(frame, tag.text, (x0 + tag.pad, y0 + tag.pad + tag.text_height), FONT, tag.scale,
                        text_color_on(color), tag.thickness, cv2.LINE_AA)  # fmt: skip
        return frame


@dataclass(frozen=True)
class Tag:
    index: int
    """The detection it labels."""
    text: str
    rect: tuple[int, int, int, int]
    scale: float
    thickness: int
    pad: int
    text_height: int


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


DEFAULT_ANNOTATORS: tuple[Annotator, ...] = (BoxAnnotator(), LabelAnnotator())


def annotate(
    frame: np.ndarray,
    detections: Detections,
    annotators: Sequence[Annotator] = DEFAULT_ANNOTATORS,
    *,
    copy: bool = True,
) -> np.ndarray:
    """Run ``annotators`` in order on ``frame`` (a copy unless ``copy=False``)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        what = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(
            f"annotate draws on uint8 BGR (H, W, 3) or grayscale frames, got a {what}; "
            "convert with (img * 255).clip(0, 255).astype(np.uint8) or cv2.cvtColor"
        )
    out = frame.copy() if copy else frame
    for annotator in annotators:
        out = annotator(out, detections)
    return out
