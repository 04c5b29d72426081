"""Deterministic, well-separated colours per class id."""

from __future__ import annotations

import colorsys
from functools import lru_cache

GOLDEN_RATIO_CONJUGATE = 0.618033988749895


@lru_cache(maxsize=1024)
def class_color(label: int) -> tuple[int, int, int]:
    """BGR colour of ``label``: hues spaced by the golden ratio so neighbours differ."""
    hue = (label * GOLDEN_RATIO_CONJUGATE + 0.12) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def text_color_on(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``bgr`` (ITU-R BT.601 luma)."""
    b, g, r = bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
