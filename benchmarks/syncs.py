"""Host syncs per batch of 16 frames: torchvision's forward against the batched path (detector.models.batched,
``batched_path``) for the four ResNet-50-FPN models (Faster R-CNN and RetinaNet, v1 and v2).

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

One line per path and model: ``syncs per batch of 16: <path>:<model> <n>    (<where>: <events by name>)``.
"""

from __future__ import annotations

import argparse
from typing import Any

import cv2
import torch
import torchvision
from common import VIDEO
from torch._subclasses.fake_tensor import FakeTensorMode

from detector.models.batched import SyncCounter, batched_path

NAMES = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")
BUILDERS = {name: getattr(torchvision.models.detection, name) for name in NAMES}
STAND_IN: dict[str, dict[str, Any]] = {
    "fasterrcnn_resnet50_fpn": {"rpn_post_nms_top_n_test": 50},
    "fasterrcnn_resnet50_fpn_v2": {"rpn_post_nms_top_n_test": 50},
    "retinanet_resnet50_fpn": {"score_thresh": 0.0, "topk_candidates": 100},
    "retinanet_resnet50_fpn_v2": {"score_thresh": 0.0, "topk_candidates": 100},
}
"""torchvision's CPU stand-in: tiny inputs (64 px), fewer proposals for Faster R-CNN; RetinaNet keeps every
score (random weights put them near its 0.01 prior, under the 0.05 threshold: no NMS at all) but at most 100
per level, so that its batched_nms runs once per image on the branch CUDA takes (boxes shifted by class;
the CPU's per-class loop starts above 1,000 boxes)."""
BATCH = 16


def build(name: str, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](weights=None, weights_backbone=None, **kwargs).eval()


def video_frames(n: int, height: int, width: int, device: torch.device) -> list[torch.Tensor]:
    """n frames of the test video, resized, as CHW float 0..1 on the device."""
    capture = cv2.VideoCapture(str(VIDEO))
    frames: list[torch.Tensor] = []
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
    parser.add_argument("--models", nargs="+", choices=NAMES, default=list(NAMES))
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "fake"
    for name in args.models:
        if device == "cuda":
            cuda = torch.device("cuda")
            model = build(name).to(cuda)
            frames = video_frames(BATCH, 720, 1280, cuda)
            fast = batched_path(model)
            assert fast is not None
            report("torchvision", name, "cuda, 720x1280", count(model, frames, "cuda"))
            report("batched", name, "cuda, 720x1280", count(fast, frames, "cuda"))
            continue
        small = build(name, min_size=64, max_size=96, **STAND_IN[name])
        tiny = [torch.rand(3, 48 + 4 * i, 64, generator=torch.Generator().manual_seed(i)) for i in range(BATCH)]
        report("torchvision", name, "cpu stand-in, 64 px", count(small, tiny, "cpu"))
        model = build(name)
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to("cuda")
            fast = batched_path(model)
            assert fast is not None
            frames = [torch.rand(3, 720, 1280, device="cuda") for _ in range(BATCH)]
            # Up to the single host copy: reading the fake values (and any fallback) cannot run here.
            result = count(lambda batch, f=fast: f.run_device(batch).packed.cpu(), frames, "cuda")
        report("batched", name, "fake cuda, 720x1280", result)


if __name__ == "__main__":
    main()
