"""Host syncs per batch of 16 frames: torchvision's Faster R-CNN forward against detector.models.batched.

Counted with ``SyncCounter`` (nonzero, boolean-mask indexing, ``.item()``, ``torchvision::nms``, copies between
host and device), on the second batch (the first adds one-time copies of constants).

- ``--device cuda``: both paths on the GPU, 16 frames of vtest.avi resized to 720x1280.
- ``--device fake`` (the default without a GPU): the batched path on fake CUDA tensors (``FakeTensorMode``:
  shapes only, and any op that needs the data would fail); torchvision's path cannot run on fake tensors
  (its ``nonzero`` needs data), so it is counted on CPU tensors at a small size, where its batched_nms loops
  over classes (its GPU branch does not): the CPU count is a stand-in, not its CUDA count.

Random-init weights (the architecture decides the work; torchvision's count grows with the boxes kept).

    .venv/bin/python benchmarks/syncs.py
    .venv/bin/python benchmarks/syncs.py --device cuda --models fasterrcnn_resnet50_fpn
"""

from __future__ import annotations

import argparse
from typing import Any

import cv2
import torch
import torchvision
from common import VIDEO
from torch._subclasses.fake_tensor import FakeTensorMode

from detector.models.batched import BatchedFasterRCNN, SyncCounter

BUILDERS = {
    "fasterrcnn_resnet50_fpn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": torchvision.models.detection.fasterrcnn_resnet50_fpn_v2,
}
BATCH = 16


def build(name: str, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](weights=None, weights_backbone=None, **kwargs).eval()


def video_frames(n: int, height: int, width: int, device: torch.device) -> list[torch.Tensor]:
    """n frames of the test video, resized, as CHW float 0..1 on the device."""
    capture = cv2.VideoCapture(str(VIDEO))
    frames = []
    try:
        while len(frames) < n:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.resize(bgr, (width, height))[:, :, ::-1].copy()
            frames.append(torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(device))
    finally:
        capture.release()
    return frames


def count(run: Any, frames: list[torch.Tensor], device_type: str) -> tuple[int, dict[str, int]]:
    """Events of the second call of ``run(frames)`` (the first warms caches and one-time constants)."""
    with torch.no_grad():
        run(frames)
    with torch.no_grad(), SyncCounter(device_type) as counter:
        run(frames)
    return counter.total, dict(counter.events)


def report(path: str, name: str, where: str, result: tuple[int, dict[str, int]]) -> None:
    total, events = result
    print(f"syncs per batch of {BATCH}: {path}:{name} {total}    ({where}: {events})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "fake"], default="auto")
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=sorted(BUILDERS))
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "fake"
    for name in args.models:
        if device == "cuda":
            cuda = torch.device("cuda")
            model = build(name).to(cuda)
            frames = video_frames(BATCH, 720, 1280, cuda)
            fast = BatchedFasterRCNN(model)
            report("torchvision", name, "cuda, 720x1280", count(model, frames, "cuda"))
            report("batched", name, "cuda, 720x1280", count(fast, frames, "cuda"))
            continue
        small = build(name, min_size=64, max_size=96, rpn_post_nms_top_n_test=50)
        tiny = [torch.rand(3, 48 + 4 * i, 64, generator=torch.Generator().manual_seed(i)) for i in range(BATCH)]
        report("torchvision", name, "cpu stand-in, 64 px", count(small, tiny, "cpu"))
        model = build(name)
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to("cuda")
            fast = BatchedFasterRCNN(model)
            frames = [torch.rand(3, 720, 1280, device="cuda") for _ in range(BATCH)]
            # Up to the single host copy: reading the fake values (and any fallback) cannot run here.
            result = count(lambda batch, f=fast: f.run_device(batch).packed.cpu(), frames, "cuda")
        report("batched", name, "fake cuda, 720x1280", result)


if __name__ == "__main__":
    main()
