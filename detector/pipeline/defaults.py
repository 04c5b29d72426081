"""How many frames go through the model at once, and in how many threads: checks and defaults."""

from __future__ import annotations

from ..errors import ConfigError
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


BYTES_PER_PIXEL = 860
"""Peak memory a batch takes per pixel of its frames after the model's resize, all models alike (an
estimate, rounded up): Faster R-CNN v1 at 320 px took 6.7 GB of memory for a batch of 48 frames
against 1.2 GB for one -- 117 MB more per 320x427 frame."""


def available_memory(device_type: str) -> int | None:
    """Bytes free for a batch: the GPU's free memory on CUDA, the system's available memory elsewhere
    (``/proc/meminfo``); None where it cannot be told."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in open("/proc/meminfo", encoding="ascii"):  # noqa: SIM115 (read to the one line)
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def check_batch_memory(detector: Detector, batch_size: int, width: int, height: int) -> None:
    """Refuse, in one line, a batch whose estimated memory exceeds what the machine (or the GPU) has
    free: ``--batch-size 100000`` was accepted and would run out of memory on a long video."""
    limits = detector.resize_limits
    scale = 1.0 if limits is None else min(limits[0] / min(width, height), limits[1] / max(width, height))
    need = BYTES_PER_PIXEL * width * height * scale * scale
    free = available_memory(detector.device.type)
    if free is None or batch_size * need <= free:
        return
    most = max(1, int(free // need))
    raise ConfigError(
        f"batch_size {batch_size} needs about {batch_size * need / 1e9:.1f} GB for {width}x{height} frames, "
        f"more than the {free / 1e9:.1f} GB free on {detector.device.type}; use at most {most}"
    )
