"""A desktop window (OpenCV HighGUI). Needs the GUI build of OpenCV."""

from __future__ import annotations

import threading

import cv2
import numpy as np

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
    """Shows frames in a window; q or Esc stops the pipeline.

    GUI toolkits (Cocoa on macOS above all) want window calls on the main thread,
    while frames are rendered in the pipeline's writer thread: ``write`` only keeps
    the newest frame, and :meth:`pump`, which :func:`detector.runner.run` calls from the
    detecting (main) thread once per frame, shows it and reads the keyboard.
    """

    main_thread_pump = True

    def __init__(self, title: str = "detector") -> None:
        self.title = title
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        check_gui()
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise SinkError(HEADLESS_HINT) from None

    def write(self, frame: Frame, detections: Detections | None = None) -> None:
        with self._lock:
            self._latest = frame.image

    def pump(self) -> None:
        """Show the newest frame and handle keys; call from the thread that created the window."""
        with self._lock:
            image, self._latest = self._latest, None
        if image is not None:
            cv2.imshow(self.title, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise StopPipeline("window closed by the user")

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
