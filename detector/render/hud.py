"""Heads-up display: model, frame index, fps and latency in the top-left corner."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from .annotators import FONT, font_scale


@dataclass
class Hud:
    """Keeps a smoothed fps and draws one status line; call once per shown frame."""

    model: str
    smoothing: float = 0.9
    fps: float = 0.0
    _last: float | None = field(default=None, repr=False)

    def tick(self) -> float:
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            inst = 1.0 / (now - self._last)
            self.fps = inst if self.fps == 0 else self.smoothing * self.fps + (1 - self.smoothing) * inst
        self._last = now
        return self.fps

    def draw(self, frame: np.ndarray, index: int, latency_ms: float) -> np.ndarray:
        text = f"{self.model} | frame {index} | {self.fps:5.1f} fps | latency {latency_ms:4.0f} ms"
        scale = font_scale(frame)
        thick = max(1, round(scale * 1.6))
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        pad = max(3, thick + 2)
        overlay = frame[0 : th + base + 2 * pad, 0 : tw + 2 * pad]
        overlay[:] = (overlay * 0.35).astype(np.uint8)  # darkened band keeps the text readable
        cv2.putText(frame, text, (pad, pad + th), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
        return frame
