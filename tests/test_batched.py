"""The batched, sync-free paths (detector.models.batched, batched_retinanet) against torchvision's own.

Equality: same scores (exactly, as multisets), and per group of exactly equal scores the same labels and
boxes (boxes within 1e-4 px: a box decode runs on B x K rows where torchvision runs on one image's rows, so
an element may take the vectorised or the scalar ``exp``, 1 ulp apart; on this CPU they agree bit for bit).
Order inside a group of equal scores is free: torchvision's batched_nms sorts its kept boxes with an
unstable sort, and random weights make some boxes share a score (dead ReLUs give equal logits).

Sync counts run on fake CUDA tensors (FakeTensorMode: no GPU needed; a data-dependent op there cannot even
run), torchvision's on CPU tensors, where its batched_nms takes its per-class loop.
"""

from __future__ import annotations

import glob
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import cv2
import pytest
import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorMode
from torchvision.ops import boxes as box_ops

from detector.engines.torch_engine import BATCHED_ENV, TorchEngine
from detector.models.batched import (
    BatchedDetector,
    BatchedFasterRCNN,
    SyncCounter,
    batched_greedy_nms,
    batched_path,
    max_coordinate,
    nms_like_torchvision,
)
from detector.models.batched_retinanet import BatchedRetinaNet

from .conftest import COCO_MINI, VIDEO, need, tiny_config

FASTER = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")
RETINA = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")
BUILDERS: dict[str, Callable[..., Any]] = {
    name: getattr(torchvision.models.detection, name) for name in FASTER + RETINA
}
SHORT = {"fasterrcnn_resnet50_fpn": "frcnn1", "fasterrcnn_resnet50_fpn_v2": "frcnn2",
         "retinanet_resnet50_fpn": "retina1", "retinanet_resnet50_fpn_v2": "retina2"}  # fmt: skip
# Small inputs and fewer proposals keep a CPU forward near a second; a score threshold of 0 leaves thousands
# of candidates per image, so every NMS and the top-N cut are exercised, on batched_nms's per-class branch.
SMALL = {"min_size": 128, "max_size": 176}
EXTRA: dict[str, dict[str, Any]] = {
    **{
        name: {"box_score_thresh": 0.0, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}
        for name in FASTER
    },
    **{name: {"score_thresh": 0.0} for name in RETINA},
}
# RetinaNet score thresholds that leave some images (random weights: scores near the 0.01 prior) under 1,000
# candidates, where torchvision's batched_nms shifts boxes by class instead (checked where they are used),
# and some levels under topk_candidates.
HIGH = {"retinanet_resnet50_fpn": 0.02, "retinanet_resnet50_fpn_v2": 0.03}


def fast_path(model: torch.nn.Module, **options: Any) -> BatchedDetector:
    wrapper = batched_path(model, **options)
    assert wrapper is not None, f"no batched path for {type(model).__name__}"
    return wrapper


def build(name: str, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](weights=None, weights_backbone=None, **kwargs).eval()


def to_tensor(bgr: Any) -> torch.Tensor:
    return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def frames() -> list[torch.Tensor]:
    """Real frames of different sizes: COCO images, then frames of the test video."""
    images = [to_tensor(cv2.imread(p)) for p in sorted(glob.glob(f"{need(COCO_MINI)}/val2017/*.jpg"))[:5]]
    capture = cv2.VideoCapture(str(need(VIDEO)))
    try:
        for _ in range(3):
            ok, frame = capture.read()
            assert ok
            images.append(to_tensor(frame))
            for _ in range(20):
                capture.grab()
    finally:
        capture.release()
    assert len(images) == 8 and len({tuple(im.shape) for im in images}) >= 3
    return images


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: build(name, **SMALL, **EXTRA[name]) for name in BUILDERS}


@contextmanager
def score_threshold(model: torch.nn.Module, value: float | None) -> Iterator[None]:
    """RetinaNet's threshold set for a while (both paths read the attribute at each call)."""
    if value is None:
        yield
        return
    saved = model.score_thresh
    setattr(model, "score_thresh", value)  # noqa: B010 (nn.Module's __setattr__ is typed for tensors and modules)
    try:
        yield
    finally:
        setattr(model, "score_thresh", saved)  # noqa: B010


@pytest.fixture(scope="module")
def reference(
    models: dict[str, torch.nn.Module],
) -> Callable[[str, list[torch.Tensor], float | None], tuple[list[dict[str, Any]], Counter[str]]]:
    """torchvision's results on a batch, computed once per (model, batch, threshold), and which branch of
    batched_nms each of its calls took (``shifted``: one NMS on boxes shifted by class; ``per class``)."""
    cache: dict[tuple[Any, ...], tuple[list[dict[str, Any]], Counter[str]]] = {}

    def run(name: str, batch: list[torch.Tensor], threshold: float | None = None) -> Any:
        key = (name, tuple(id(im) for im in batch), threshold)
        if key not in cache:
            branches: Counter[str] = Counter()

            def counted(branch: str, real: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    branches[branch] += 1
                    return real(*args, **kwargs)

                return call

            shifted = counted("shifted", box_ops._batched_nms_coordinate_trick)
            per_class = counted("per class", box_ops._batched_nms_vanilla)
            with (
                torch.no_grad(),
                score_threshold(models[name], threshold),
                mock.patch.object(box_ops, "_batched_nms_coordinate_trick", shifted),
                mock.patch.object(box_ops, "_batched_nms_vanilla", per_class),
            ):
                cache[key] = (models[name](batch), branches)
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


CASES = [
    (name, picks, None) for name in BUILDERS for picks in ([5], [0, 6, 2], list(range(8)))
] + [(name, [0, 6, 2], HIGH[name]) for name in RETINA]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "picks", "threshold"),
    CASES,
    ids=[f"{SHORT[n]}-batch{len(p)}" + ("" if t is None else f"-score{t}") for n, p, t in CASES],
)
def test_equals_torchvision_on_the_same_batch(name, picks, threshold, frames, models, reference) -> None:
    batch = [frames[i] for i in picks]
    expected, branches = reference(name, batch, threshold)
    fast = fast_path(models[name])
    assert isinstance(fast, BatchedRetinaNet if name in RETINA else BatchedFasterRCNN)
    with score_threshold(models[name], threshold):
        state = fast.run_device(batch)
    host = state.packed.cpu()
    assert not host[:, -1].any(), "no fallback expected at these sizes"
    got = fast.unpack(host, state)
    if threshold is None:
        # A threshold of 0 fills every image's detections_per_img (100 / 300) through the per-class branch
        # of batched_nms (Faster R-CNN's RPN may take either, by image).
        cap = getattr(models[name], "roi_heads", models[name]).detections_per_img
        assert [len(r["scores"]) for r in got] == [cap] * len(batch)
        assert branches["per class"] >= len(batch)
        assert name in FASTER or branches == {"per class": len(batch)}
    else:
        assert branches["shifted"] >= 1, f"the threshold should leave an image under 1,000 candidates: {branches}"
    for e, g in zip(expected, got, strict=True):
        assert_same(e, g)


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn"], ids=["frcnn1", "retina1"])
def test_a_fixed_size_too_small_is_flagged_and_redone_by_torchvision(name, frames, models, reference) -> None:
    """A top-N below detections_per_img and no NMS iterations: every image flagged, results still exact."""
    batch = [frames[0], frames[6], frames[2]]
    option = {"roi_topk": 20} if name in FASTER else {"nms_topk": 20}
    fast = fast_path(models[name], nms_iterations=0, **option)
    state = fast.run_device(batch)
    host = state.packed.cpu()
    assert host[:, -1].all()
    expected, _ = reference(name, batch)
    for e, g in zip(expected, fast.unpack(host, state), strict=True):
        assert_same(e, g)
    assert (fast.images, fast.fallbacks) == (3, 3)
    assert fast([]) == []


def test_retinanet_redoes_only_the_flagged_images(frames, models, reference) -> None:
    """nms_topk 100 at the higher threshold: the image with thousands of candidates is flagged (its NMS saw too
    few of them to fill 300), the two with fewer than 100 are not; torchvision redoes the first alone."""
    name, threshold = "retinanet_resnet50_fpn", HIGH["retinanet_resnet50_fpn"]
    batch = [frames[0], frames[6], frames[2]]
    expected, _ = reference(name, batch, threshold)
    fast = fast_path(models[name], nms_topk=100)
    with score_threshold(models[name], threshold):
        state = fast.run_device(batch)
        host = state.packed.cpu()
        assert host[:, -1].tolist() == [1.0, 0.0, 0.0]
        got = fast.unpack(host, state)
    assert len(got[0]["scores"]) == 300 and all(len(g["scores"]) < 100 for g in got[1:])
    for e, g in zip(expected, got, strict=True):
        assert_same(e, g)
    assert (fast.images, fast.fallbacks) == (3, 1)


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


def test_nms_like_torchvision_takes_batched_nms_branch_per_image() -> None:
    """Images of 150 and 1,500 valid boxes: torchvision shifts the first (<= 4,000 numbers on the CPU) and
    loops over classes for the second; near-duplicate boxes of 30 classes put IoUs at the threshold, where
    the shift's rounding decides. Either way the kept set is batched_nms's."""
    g = torch.Generator().manual_seed(3)
    n = 1600
    base = torch.rand(n // 4, 1, 2, generator=g) * 600
    jitter = torch.rand(n // 4, 4, 4, generator=g) * 6
    boxes = torch.cat((base, base + 40), dim=2).expand(-1, 4, -1).reshape(n, 4) + jitter.reshape(n, 4)
    boxes = torch.stack((boxes, boxes * 0.25), dim=0)  # image 1 keeps its boxes in a 160 px square
    labels = torch.randint(1, 31, (2, n), generator=g)
    scores = torch.rand(2, n, generator=g)
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, 150:] = False
    order = scores.argsort(dim=1, descending=True, stable=True)
    sb = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    ss, sl, sv = scores.gather(1, order), labels.gather(1, order), valid.gather(1, order)
    keep, converged = nms_like_torchvision(sb, sv, sl, sv.sum(1), max_coordinate(sb, sv), 0.5, 64)
    assert converged.all()
    for i in range(2):
        idx = sv[i].nonzero()[:, 0]
        want = box_ops.batched_nms(sb[i, idx], ss[i, idx], sl[i, idx], 0.5)
        assert sorted(idx[want].tolist()) == keep[i].nonzero()[:, 0].tolist()


def fake_cuda_syncs(name: str) -> dict[str, int]:
    """Events of the second batch of 16 frames of 720x1280 (the first adds one-time constant copies)."""
    model = build(name)  # real-size transform; the weights never run for real
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to("cuda")
        fast = fast_path(model)
        images = [torch.rand(3, 720, 1280, device="cuda") for _ in range(16)]
        fast.run_device(images).packed.cpu()
        with SyncCounter() as counter:
            fast.run_device(images).packed.cpu()
    return dict(counter.events)


@pytest.mark.parametrize("name", list(BUILDERS), ids=list(SHORT.values()))
def test_batched_path_syncs_at_most_twice_per_batch_of_16(name) -> None:
    """From 232 (Faster R-CNN) and 448 (RetinaNet) on torchvision's path: one copy of the image sizes to the
    device, one copy of the results back."""
    events = fake_cuda_syncs(name)
    assert sum(events.values()) <= 2
    assert events == {"host-to-device copy": 1, "device-to-host copy": 1}


def test_the_counter_sees_torchvisions_syncs() -> None:
    """torchvision's own forward on 16 (tiny, CPU) frames: well over a hundred of the same events."""
    model = build("fasterrcnn_resnet50_fpn", min_size=64, max_size=96, rpn_post_nms_top_n_test=50)
    images = [torch.rand(3, 48 + 4 * i, 64, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    with torch.no_grad(), SyncCounter("cpu") as counter:
        model(images)
    assert counter.total >= 100, counter.events
    assert counter.events["nonzero"] >= 16 and counter.events["torchvision::nms"] >= 16


def test_batched_path_covers_the_four_models_only(models) -> None:
    assert type(batched_path(models["fasterrcnn_resnet50_fpn_v2"])) is BatchedFasterRCNN
    assert type(batched_path(models["retinanet_resnet50_fpn_v2"])) is BatchedRetinaNet
    assert batched_path(torch.nn.Linear(1, 1)) is None
    torch.manual_seed(0)
    masks = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    assert batched_path(masks.eval()) is None
    fixed = build("retinanet_resnet50_fpn", fixed_size=(64, 64))
    assert batched_path(fixed) is None


def test_refuses_what_it_does_not_cover() -> None:
    with pytest.raises(TypeError, match="FasterRCNN"):
        BatchedFasterRCNN(torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="RetinaNet"):
        BatchedRetinaNet(torch.nn.Linear(1, 1))
    for name in ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn"):
        model = build(name, min_size=64, max_size=96).train()
        with pytest.raises(RuntimeError, match="eval"):
            fast_path(model).run_device([torch.rand(3, 32, 32)])


def test_the_engine_forced_on_gives_torchvisions_results(frames, monkeypatch) -> None:
    """DETECTOR_BATCHED=on through Detector.from_config on the CPU: the batched path runs and its results
    are torchvision's; auto keeps torchvision's path on the CPU, off drops it; a bad value is one line."""
    from detector import Detector
    from detector.engines.torch_engine import batched_mode
    from detector.errors import ConfigError

    batch = [frames[i] for i in (1, 7, 3)]
    monkeypatch.setenv(BATCHED_ENV, "on")
    detector = Detector.from_config(tiny_config("retinanet_resnet50_fpn", score_threshold=0.0), progress=False)
    engine = detector.engine
    assert isinstance(engine, TorchEngine) and isinstance(engine.batched, BatchedRetinaNet)
    fast = engine.batched
    calls: list[int] = []
    real = BatchedRetinaNet.run_device

    def counted(self: BatchedRetinaNet, images: list[torch.Tensor]) -> Any:
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(BatchedRetinaNet, "run_device", counted)
    got = detector.forward(batch)
    assert calls == [3]
    with torch.no_grad():
        expected = detector.model(batch)  # the same module: torchvision's own forward
    assert all(len(e["scores"]) > 0 for e in expected)
    for e, g in zip(expected, got, strict=True):
        assert_same(e, g)
    assert [len(d) for d in detector.postprocess(got)] == [len(e["scores"]) for e in expected]

    monkeypatch.setenv(BATCHED_ENV, "auto")
    assert engine.use_batched() is False and engine.batched is None  # the CPU keeps torchvision's path
    assert engine.use_batched("on") is True and engine.batched is fast  # one wrapper per engine: its counts go on
    assert fast.images == 3 and engine.use_batched("off") is False
    assert batched_mode(" ON ") == "on"
    monkeypatch.setenv(BATCHED_ENV, "fast")
    with pytest.raises(ConfigError, match="DETECTOR_BATCHED must be auto, on or off, got 'fast'"):
        engine.use_batched()


@pytest.mark.parametrize("name", list(BUILDERS), ids=list(SHORT.values()))
def test_cuda_graphs_capture_the_device_part_whole_with_the_same_results(
    name, frames, models, reference, monkeypatch
) -> None:
    """use_graphs(): the device part is captured by torch.compile's cudagraphs backend with fullgraph=True (a
    graph break raises), once per input shape, from its second batch on; on the CPU the captured graph runs
    without a CUDA graph and gives the uncaptured path's packed results bit for bit, so torchvision's. (The
    replay on a GPU is the device benchmark's: ``benchmarks/gpu.py --cuda-graphs``.)"""
    from torch._dynamo.utils import counters

    batch = [frames[i] for i in (0, 6, 2)]
    expected, _ = reference(name, batch)  # first: torchvision's pooler keeps its scales, which the capture reads
    plain = fast_path(models[name])
    want = plain.run_device(batch).packed
    captured = fast_path(models[name])
    captured.use_graphs()
    assert captured.graphs
    steps: list[int] = []  # each replay starts a new CUDA graph tree step (its previous outputs, read, may go)
    monkeypatch.setattr("detector.models.batched._mark_step_begin", lambda: steps.append(1))
    before = counters["stats"]["unique_graphs"]
    first = captured.run_device(batch)  # a new shape: uncaptured, filling the anchor and scale caches
    assert counters["stats"]["unique_graphs"] == before and torch.equal(first.packed, want)
    state = captured.run_device(batch)
    assert counters["stats"]["unique_graphs"] == before + 1, "one graph for the whole device part"
    assert torch.equal(state.packed, want)
    for e, g in zip(expected, captured.unpack(state.packed.cpu(), state), strict=True):
        assert_same(e, g)
    again = captured.run_device(batch)  # the same shapes: replayed, not captured again
    assert counters["stats"]["unique_graphs"] == before + 1 and torch.equal(again.packed, want)
    assert len(steps) == 2, "a step for each captured call, none for the uncaptured first"
    captured.use_graphs(False)
    assert not captured.graphs and torch.equal(captured.run_device(batch).packed, want)


def test_cuda_graphs_keep_the_fallback_exact(frames, models, reference) -> None:
    """Captured, a fixed size too small still flags every image and torchvision redoes them from the
    captured graph's features: the results are still exact."""
    batch = [frames[0], frames[6], frames[2]]
    fast = fast_path(models["fasterrcnn_resnet50_fpn"], nms_iterations=0, roi_topk=20)
    fast.use_graphs()
    fast(batch)  # the first batch of a shape runs uncaptured
    got = fast(batch)
    expected, _ = reference("fasterrcnn_resnet50_fpn", batch)
    for e, g in zip(expected, got, strict=True):
        assert_same(e, g)
    assert (fast.images, fast.fallbacks) == (6, 6)


def test_the_engine_takes_cuda_graphs_from_the_environment(monkeypatch, caplog) -> None:
    """DETECTOR_CUDA_GRAPHS=on captures the batched path's device part; without the batched path it says it
    runs without them; a bad value is one line."""
    from detector.engines.torch_engine import GRAPHS_ENV, graphs_wanted
    from detector.errors import ConfigError

    model = build("retinanet_resnet50_fpn", **SMALL)
    monkeypatch.setenv(GRAPHS_ENV, "on")
    engine = TorchEngine(model, device=torch.device("cpu"), batched="on")
    assert engine.cuda_graphs and engine.batched is not None and engine.batched.graphs
    assert engine.use_batched("off") is False
    assert "CUDA graphs (DETECTOR_CUDA_GRAPHS) apply to the batched path" in caplog.text
    assert engine.use_batched("on") is True and engine.batched.graphs
    monkeypatch.setenv(GRAPHS_ENV, "off")
    assert not TorchEngine(model, device=torch.device("cpu"), batched="on").batched.graphs
    assert graphs_wanted(True) and not graphs_wanted(False)
    monkeypatch.setenv(GRAPHS_ENV, "yes")
    with pytest.raises(ConfigError, match="DETECTOR_CUDA_GRAPHS must be on or off, got 'yes'"):
        graphs_wanted()


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "plain"])
def test_cuda_graphs_take_one_batch_at_a_time(graphs, frames, models, reference) -> None:
    """Several detect threads share one engine: with graphs on they take turns for the device part (a
    replay's outputs live only until the next replay), without graphs they may overlap; results exact."""
    import threading
    import time

    fast = fast_path(models["retinanet_resnet50_fpn"])
    fast.graphs = graphs  # the turn-taking alone: the capture itself is tested above
    inner, inside, most = fast._core, [0], [0]
    lock = threading.Lock()

    def tracked(*args: Any) -> Any:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.3)
        try:
            return inner(*args)
        finally:
            with lock:
                inside[0] -= 1

    fast._core = fast._device = tracked  # type: ignore[method-assign]
    batch = [frames[1], frames[7]]
    results: list[Any] = [None, None]

    def detect(i: int) -> None:
        results[i] = fast(batch)

    threads = [threading.Thread(target=detect, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == (1 if graphs else 2)
    expected, _ = reference("retinanet_resnet50_fpn", batch)
    for got in results:
        for e, g in zip(expected, got, strict=True):
            assert_same(e, g)
