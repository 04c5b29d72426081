"""How many frames go through the model at once, and in how many threads: checks and defaults."""

from __future__ import annotations

from ..predictor import Detector

DEFAULT_DETECT_THREADS = 1
"""Batches detected at once when none is given, on any device. On an H100, torchvision's Faster
R-CNN leaves the GPU idle half of the time while Python filters proposals and waits for results,
and a second thread helped the Faster R-CNNs but not RetinaNet (the GIL is shared with decoding
and drawing; figures in the README's Throughput section), so more is opt-in; on the CPU the cores
are busy anyway."""


def check_counts(**counts: int | None) -> None:
    """Raise ``ValueError`` for a count given below 1 (``batch_size``, ``detect_threads``)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def default_batch_size(detector: Detector) -> int:
    """Frames per forward pass when none is given: 1 on the CPU, where a batch is no faster per
    frame and only adds latency; 8 on CUDA, where it was measured best on an H100 (the README's
    Throughput section; 16 doubles the latency for little more)."""
    return 8 if detector.device.type == "cuda" else 1
