"""The batched, sync-free Faster R-CNN path (detector.models.batched) against torchvision's own.

Equality: same scores (exactly, as multisets), and per group of exactly equal scores the same labels and
boxes (boxes within 1e-4 px: the RoI box decode runs on B x P rows where torchvision runs on the valid rows
only, so an element may take the vectorised or the scalar ``exp``, 1 ulp apart; on this CPU they agree bit
for bit). Order inside a group of equal scores is free: torchvision's batched_nms sorts its kept boxes with
an unstable sort, and random weights make many boxes share a score (dead ReLUs give equal logits).

Sync counts run on fake CUDA tensors (FakeTensorMode: no GPU needed; a data-dependent op there cannot even
run), torchvision's on CPU tensors, where its batched_nms takes its per-class loop.
"""

from __future__ import annotations

import glob
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import cv2
import pytest
import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorMode

from detector.models.batched import BatchedFasterRCNN, SyncCounter, batched_greedy_nms

DATA = "/work/shared/data"
BUILDERS: dict[str, Callable[..., Any]] = {
    "v1": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "v2": torchvision.models.detection.fasterrcnn_resnet50_fpn_v2,
}
# Small inputs and fewer proposals keep a CPU forward near a second; box_score_thresh=0 leaves thousands of
# candidates per image, so every NMS and the top-100 cut are exercised.
SMALL = {"min_size": 160, "max_size": 224, "box_score_thresh": 0.0}
FEW = {"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150}


def build(version: str, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[version](weights=None, weights_backbone=None, **kwargs).eval()


def to_tensor(bgr: Any) -> torch.Tensor:
    return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def frames() -> list[torch.Tensor]:
    """Real frames of different sizes: COCO images, then frames of the test video."""
    images = [to_tensor(cv2.imread(p)) for p in sorted(glob.glob(f"{DATA}/coco-mini/val2017/*.jpg"))[:5]]
    capture = cv2.VideoCapture(f"{DATA}/video/vtest.avi")
    try:
        for _ in range(3):
            ok, frame = capture.read()
            assert ok
            images.append(to_tensor(frame))
            for _ in range(20):
                capture.grab()
    finally:
        capture.release()
    return images


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {v: build(v, **SMALL, **FEW) for v in BUILDERS}


@pytest.fixture(scope="module")
def reference(models: dict[str, torch.nn.Module]) -> Callable[[str, list[torch.Tensor]], list[dict[str, Any]]]:
    """torchvision's results on a batch, computed once per (model, batch)."""
    cache: dict[tuple[str, tuple[int, ...]], list[dict[str, Any]]] = {}

    def run(version: str, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        key = (version, tuple(id(im) for im in batch))
        if key not in cache:
            with torch.no_grad():
                cache[key] = models[version](batch)
        return cache[key]

    return run


def assert_same(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Same detections; order free only among exactly equal scores."""
    assert len(got["scores"]) == len(expected["scores"])
    assert got["labels"].dtype == torch.int64 and got["boxes"].shape == expected["boxes"].shape
    assert torch.equal(got["scores"].sort().values, expected["scores"].sort().values)

    def groups(d: dict[str, torch.Tensor]) -> dict[float, torch.Tensor]:
        rows: dict[float, list[list[float]]] = defaultdict(list)
        for s, label, box in zip(d["scores"].tolist(), d["labels"].tolist(), d["boxes"].tolist(), strict=True):
            rows[s].append([label, *box])
        return {s: torch.tensor(sorted(r)) for s, r in rows.items()}

    want, have = groups(expected), groups(got)
    assert want.keys() == have.keys()
    for s in want:
        assert torch.equal(want[s][:, 0], have[s][:, 0]), f"labels differ at score {s}"
        torch.testing.assert_close(have[s][:, 1:], want[s][:, 1:], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("version", "picks"),
    [("v1", [5]), ("v1", [0, 6, 2]), ("v1", list(range(8))), ("v2", [3]), ("v2", [1, 7, 4])],
    ids=["v1-batch1", "v1-batch3", "v1-batch8", "v2-batch1", "v2-batch3"],
)
def test_equals_torchvision_on_the_same_batch(version, picks, frames, models, reference) -> None:
    batch = [frames[i] for i in picks]
    expected = reference(version, batch)
    fast = BatchedFasterRCNN(models[version])
    state = fast.run_device(batch)
    host = state.packed.cpu()
    assert not host[:, -1].any(), "no fallback expected at these sizes"
    got = fast.unpack(host, state)
    assert [len(r["scores"]) for r in got] == [100] * len(batch)
    for e, g in zip(expected, got, strict=True):
        assert_same(e, g)


def test_a_fixed_size_too_small_is_flagged_and_redone_by_torchvision(frames, models, reference) -> None:
    """roi_topk below detections_per_img and no NMS iterations: every image flagged, results still exact."""
    batch = [frames[0], frames[6], frames[2]]
    fast = BatchedFasterRCNN(models["v1"], roi_topk=20, nms_iterations=0)
    state = fast.run_device(batch)
    host = state.packed.cpu()
    assert host[:, -1].all()
    for e, g in zip(reference("v1", batch), fast.unpack(host, state), strict=True):
        assert_same(e, g)
    assert fast([]) == []


def test_batched_greedy_nms_equals_torchvision_nms() -> None:
    """Per-image greedy NMS (with and without classes) equals torchvision's, including a long chain."""
    g = torch.Generator().manual_seed(1)
    n, b = 300, 3
    xy = torch.rand(b, n, 2, generator=g) * 100
    wh = torch.rand(b, n, 2, generator=g) * 30 + 1
    boxes = torch.cat((xy, xy + wh), dim=2)
    boxes[0, :40] = torch.tensor([[i * 2.0, 0.0, i * 2.0 + 10, 10.0] for i in range(40)])  # a suppression chain
    scores = torch.rand(b, n, generator=g)
    scores[0, :40] = torch.linspace(1.5, 1.1, 40)
    classes = torch.randint(0, 4, (b, n), generator=g)
    valid = torch.rand(b, n, generator=g) > 0.1
    order = scores.argsort(dim=1, descending=True, stable=True)
    sb = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    sv = valid.gather(1, order)
    sc = classes.gather(1, order)
    for cls in (None, sc):
        keep, converged = batched_greedy_nms(sb, sv, 0.5, iterations=64, classes=cls)
        assert converged.all()
        for i in range(b):
            idx = sv[i].nonzero()[:, 0]
            ss = scores[i].gather(0, order[i])[idx]
            if cls is None:
                want = torchvision.ops.nms(sb[i, idx], ss, 0.5)
            else:
                want = torchvision.ops.boxes._batched_nms_vanilla(sb[i, idx], ss, cls[i, idx], 0.5)
            assert sorted(idx[want].tolist()) == keep[i].nonzero()[:, 0].tolist()
    _, converged = batched_greedy_nms(sb, sv, 0.5, iterations=2)
    assert not converged[0], "a 40-box chain cannot settle in 2 iterations"


def fake_cuda_syncs(version: str) -> dict[str, int]:
    """Events of the second batch of 16 frames of 720x1280 (the first adds one-time constant copies)."""
    model = build(version)  # real-size transform; the weights never run for real
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to("cuda")
        fast = BatchedFasterRCNN(model)
        images = [torch.rand(3, 720, 1280, device="cuda") for _ in range(16)]
        fast.run_device(images).packed.cpu()
        with SyncCounter() as counter:
            fast.run_device(images).packed.cpu()
    return dict(counter.events)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_batched_path_syncs_at_most_twice_per_batch_of_16(version) -> None:
    events = fake_cuda_syncs(version)
    assert events == {"host-to-device copy": 1, "device-to-host copy": 1}


def test_the_counter_sees_torchvisions_syncs() -> None:
    """torchvision's own forward on 16 (tiny, CPU) frames: well over a hundred of the same events."""
    model = build("v1", min_size=64, max_size=96, rpn_post_nms_top_n_test=50)
    images = [torch.rand(3, 48 + 4 * i, 64, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    with torch.no_grad(), SyncCounter("cpu") as counter:
        model(images)
    assert counter.total >= 100, counter.events
    assert counter.events["nonzero"] >= 16 and counter.events["torchvision::nms"] >= 16


def test_refuses_what_it_does_not_cover() -> None:
    with pytest.raises(TypeError, match="FasterRCNN"):
        BatchedFasterRCNN(torch.nn.Linear(1, 1))
    model = build("v1", min_size=64, max_size=96).train()
    with pytest.raises(RuntimeError, match="eval"):
        BatchedFasterRCNN(model).run_device([torch.rand(3, 32, 32)])
