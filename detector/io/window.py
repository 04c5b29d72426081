"""A desktop window (OpenCV HighGUI). Needs the GUI build of OpenCV."""

from __future__ import annotations

import cv2

from ..errors import SinkError, StopPipeline
from ..structures import Detections
from .base import Closeable
from .types import Frame

HEADLESS_HINT = (
    "this OpenCV has no GUI (opencv-python-headless) or there is no display; use --serve 8080 for the browser "
    "view, or install opencv-python for windows"
)


def check_gui() -> None:
    """Raise ``SinkError`` when OpenCV cannot open windows here."""
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() == "NONE":
        raise SinkError(HEADLESS_HINT)


class WindowSink(Closeable):
    """Shows frames in a window; q or Esc stops the pipeline."""

    def __init__(self, title: str = "detector") -> None:
        self.title = title
        check_gui()
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise SinkError(HEADLESS_HINT) from None

    def write(self, frame: Frame, detections: Detections | None = None) -> None:
        cv2.imshow(self.title, frame.image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise StopPipeline("window closed by the user")

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
