"""Registry models with random weights on small inputs: contract and parity with torchvision."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detector import ConfigError, Detections, Detector
from detector.models import MODELS

from .conftest import COCO_MINI, REGISTRY, need, tiny_config


def direct(model: torch.nn.Module, frame_bgr: np.ndarray) -> dict[str, torch.Tensor]:
    """What a user would write by hand: BGR -> RGB float CHW in 0..1, model([x])."""
    x = torch.from_numpy(frame_bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        return model([x])[0]


@pytest.fixture(scope="module", params=REGISTRY)
def random_detector(request: pytest.FixtureRequest) -> Detector:
    torch.manual_seed(0)
    return Detector.from_config(tiny_config(request.param, score_threshold=0.0))


def test_registry_lists_the_four_models() -> None:
    assert tuple(MODELS) == REGISTRY


def test_contract(random_detector: Detector, small_frame: np.ndarray) -> None:
    dets = random_detector(small_frame)
    assert isinstance(dets, Detections)
    assert len(dets) > 0, "random heads with score_threshold 0 should still emit boxes"
    assert len(dets) <= 100
    assert dets.boxes.dtype == np.float32 and dets.boxes.shape == (len(dets), 4)
    assert dets.scores.dtype == np.float32 and dets.labels.dtype == np.int64
    h, w = small_frame.shape[:2]
    assert (dets.boxes[:, 0] >= 0).all() and (dets.boxes[:, 1] >= 0).all()
    assert (dets.boxes[:, 2] <= w).all() and (dets.boxes[:, 3] <= h).all()
    assert (dets.boxes[:, 2] >= dets.boxes[:, 0]).all() and (dets.boxes[:, 3] >= dets.boxes[:, 1]).all()
    assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
    assert ((dets.labels >= 0) & (dets.labels < 91)).all()
    assert dets.class_names is random_detector.class_names


def assert_same(dets: Detections, ref: dict[str, torch.Tensor]) -> None:
    assert len(dets) == len(ref["scores"]) > 0
    np.testing.assert_allclose(dets.boxes, ref["boxes"].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(dets.scores, ref["scores"].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dets.labels, ref["labels"].numpy())


def test_parity_with_direct_torchvision_call(random_detector: Detector, small_frame: np.ndarray) -> None:
    assert_same(random_detector(small_frame), direct(random_detector.model, small_frame))


def test_parity_for_non_contiguous_frames(random_detector: Detector, small_frame: np.ndarray) -> None:
    big = np.zeros((200, 300, 3), np.uint8)
    big[40:160, 70:230] = small_frame
    crop = big[40:160, 70:230]  # a view with the parent's strides
    assert not crop.flags["C_CONTIGUOUS"]
    assert_same(random_detector(crop), direct(random_detector.model, small_frame))
    reversed_view = small_frame[:, :, ::-1][:, :, ::-1]  # negative strides, same pixels
    assert_same(random_detector(reversed_view), direct(random_detector.model, small_frame))


def test_rgb_tensor_input_matches_bgr_frame(random_detector: Detector, small_frame: np.ndarray) -> None:
    rgb_u8 = torch.from_numpy(small_frame[:, :, ::-1].copy()).permute(2, 0, 1)
    from_u8 = random_detector(rgb_u8)
    from_float = random_detector(rgb_u8.float() / 255.0)
    ref = direct(random_detector.model, small_frame)
    assert_same(from_u8, ref)
    assert_same(from_float, ref)


def test_batch_matches_a_direct_batched_call(random_detector: Detector, small_frame: np.ndarray) -> None:
    other = np.ascontiguousarray(small_frame[::-1])  # same size, different content
    batch = random_detector([small_frame, other])
    assert isinstance(batch, list) and len(batch) == 2
    xs = [torch.from_numpy(f[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0 for f in (small_frame, other)]
    with torch.no_grad():
        refs = random_detector.model(xs)
    for dets, ref in zip(batch, refs, strict=True):
        assert_same(dets, ref)
    stacked = random_detector(np.stack([small_frame, other]))  # a (B, H, W, 3) array is a batch too
    for dets, ref in zip(stacked, refs, strict=True):
        assert_same(dets, ref)
    assert random_detector([]) == []


def test_grayscale_and_bgra_frames(small_frame: np.ndarray) -> None:
    torch.manual_seed(0)
    det = Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", score_threshold=0.0))
    gray = small_frame.mean(axis=2).astype(np.uint8)
    ref = direct(det.model, np.repeat(gray[:, :, None], 3, axis=2))
    assert_same(det(gray), ref)
    bgra = np.concatenate([small_frame, np.full(small_frame.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert_same(det(bgra), direct(det.model, small_frame))


def test_bad_frames_are_rejected(small_frame: np.ndarray) -> None:
    det = Detector.from_config(tiny_config("retinanet_resnet50_fpn"))
    with pytest.raises(ValueError, match="uint8"):
        det(small_frame.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        det(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(ValueError, match="cannot read no_such_frame.jpg"):
        det("no_such_frame.jpg")  # paths are read as images
    with pytest.raises(TypeError):
        det(3)  # type: ignore[arg-type]


def test_class_filter_and_thresholds(small_frame: np.ndarray) -> None:
    torch.manual_seed(0)
    det = Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", score_threshold=0.0, classes=["person", "car"]))
    dets = det(small_frame)
    assert set(dets.labels.tolist()) <= {1, 3}
    unfiltered = direct(det.model, small_frame)
    assert len(dets) == int(np.isin(unfiltered["labels"].numpy(), [1, 3]).sum())
    with pytest.raises(ConfigError, match="unicorn"):
        Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", classes=["unicorn"]))


def test_model_knobs_reach_torchvision() -> None:
    det = Detector.from_config(
        tiny_config(
            "fasterrcnn_resnet50_fpn",
            nms_threshold=0.3,
            max_detections=7,
            rpn_pre_nms_top_n=50,
            rpn_post_nms_top_n=20,
            score_threshold=0.2,
        )
    )
    m = det.model
    assert (m.transform.min_size, m.transform.max_size) == ((128,), 160)
    assert (m.roi_heads.nms_thresh, m.roi_heads.detections_per_img, m.roi_heads.score_thresh) == (0.3, 7, 0.2)
    assert m.rpn._pre_nms_top_n["testing"] == 50 and m.rpn._post_nms_top_n["testing"] == 20
    r = Detector.from_config(tiny_config("retinanet_resnet50_fpn_v2", nms_threshold=0.4, max_detections=9)).model
    assert (r.nms_thresh, r.detections_per_img) == (0.4, 9)


def test_bf16_and_channels_last_run_on_cpu(small_frame: np.ndarray) -> None:
    torch.manual_seed(0)
    det = Detector.from_config(
        tiny_config("fasterrcnn_resnet50_fpn", score_threshold=0.0, precision="bf16", channels_last=True)
    )
    dets = det(small_frame)
    assert dets.boxes.dtype == np.float32 and len(dets) > 0
    assert det.model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for CPU-only machines")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", precision="fp16"))
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Detector.from_config(tiny_config("fasterrcnn_resnet50_fpn", device="cuda"))


def test_no_global_torch_state_changes_on_import() -> None:
    import subprocess
    import sys

    code = (
        "import torch; state=lambda: (torch.get_num_threads(), torch.backends.cudnn.benchmark,"
        " torch.is_grad_enabled(), torch.backends.quantized.engine); before=state();"
        "import detector, detector.cli, detector.runner, detector.models; assert state() == before, 'import';"
        "m = detector.load('retinanet_resnet50_fpn', weights='random', min_size=64, max_size=96, device='cpu');"
        "import numpy; m(numpy.zeros((48, 64, 3), numpy.uint8));"
        "assert state() == before, (before, state()); print('same')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "same"


def test_the_installed_torch_is_inside_the_declared_range_and_runs_the_shipped_model() -> None:
    """d2go is quantized TorchScript, which torch deprecates: the torch range is pinned to releases it
    was tested with, and this checks the pin holds where the suite runs and the model still detects."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.version import Version

    import detector

    (torch_req,) = [Requirement(r) for r in requires("detector-rt") or [] if Requirement(r).name == "torch"]
    assert torch_req.specifier and any(s.operator == "<" for s in torch_req.specifier), torch_req
    assert Version(torch.__version__.split("+")[0]) in torch_req.specifier, (torch.__version__, str(torch_req))
    frame = cv2.imread(str(sorted(need(COCO_MINI / "val2017").glob("*.jpg"))[0]))
    assert len(detector.load("d2go")(frame)) > 0
