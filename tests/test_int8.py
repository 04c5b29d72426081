"""int8 on OpenVINO (NNCF post-training quantization): what is quantized, what stays f32, agreement, calibration.

Random weights (seed 0 via ``weights: random``), min_size 160, calibrated on 3 frames of the shipped
clip: each model is exported and quantized once per module (about 20-40 s each on 2 cores). Nothing
here needs VNNI or AVX512: OpenVINO runs int8 on any AVX2 CPU (slower without VNNI); the check on the
runtime model's int8 kernels applies where OpenVINO lists the ``INT8`` capability, the graph checks
everywhere.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import nncf  # noqa: F401 (the dev extra installs it: a missing NNCF fails here, not skips)
import numpy as np
import openvino as ov
import pytest
import torch

from detector import load_config
from detector.engines.export import export_model, weights_sha256
from detector.engines.quantize import (
    BOX_HEAD_SCOPE,
    INT8_SCOPES,
    INT8_SCOPES_NO_VNNI,
    SCOPES_KEY,
    CalibrationSet,
    box_head_as_convolutions,
    fidelity,
    int8_node_names,
    quantize_openvino,
    read_calibration,
)
from detector.errors import EngineError, SourceError
from detector.models import build_model

from .conftest import DEMO

MODELS = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn")
SIZES = {"min_size": 160, "max_size": 200, "score_threshold": 0.0, "device": "cpu", "weights": "random"}
PREDICTORS = ("cls_logits", "bbox_reg", "bbox_pred", "box_predictor")
"""Name parts of the final predictors (RetinaNet heads, RPN 1x1s, ROI box predictor): kept f32 when quantized
for a CPU with VNNI/AMX; without them RetinaNet's (``/head/``) are int8 too, the others stay f32."""


def kept_f32(names: str, no_vnni: bool) -> bool:
    """Whether a compute node named ``names`` must stay f32 for a model quantized for this kind of CPU
    (Faster R-CNN's box head is int8 on both: without VNNI as convolutions)."""
    return any(p in names for p in PREDICTORS) and not (no_vnni and "/model/head/" in names)


def scopes_for(name: str, no_vnni: bool) -> tuple[str, ...]:
    """The node-name prefixes a model ``name`` is quantized in for a CPU without VNNI or with it."""
    if not no_vnni:
        return INT8_SCOPES
    return INT8_SCOPES_NO_VNNI + (BOX_HEAD_SCOPE if name.startswith("fasterrcnn") else ())


@pytest.fixture(scope="module")
def calibration() -> CalibrationSet:
    return read_calibration(DEMO, 3)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, calibration: CalibrationSet) -> dict[str, tuple[Path, Any]]:
    """model -> (fp32 .onnx, int8 ``ov.Model``)."""
    root = tmp_path_factory.mktemp("int8")
    out = {}
    for name in MODELS:
        cfg = load_config(None, {"model": name, **SIZES})
        model, names, _ = build_model(cfg)
        onnx = root / f"{name}.onnx"
        export_model(model, cfg, names, onnx, fmt="onnx", weights_sha=weights_sha256(cfg, model), progress=False)
        out[name] = (onnx, quantize_openvino(onnx, calibration))
    return out


@functools.cache
def clip() -> tuple[np.ndarray, ...]:
    """All 60 frames of the shipped clip, RGB CHW float (the calibration set takes 0, 30 and 59)."""
    return read_calibration(DEMO, 60).frames


def frame(index: int) -> np.ndarray:
    return clip()[index]


# -- calibration ---------------------------------------------------------------------------------------------------


def test_calibration_frames_are_spread_evenly_rgb_chw_and_described(calibration: CalibrationSet) -> None:
    what = json.loads(calibration.description)
    assert what["kind"] == "video" and what["frames"] == [0, 30, 59]  # 60 frames, first and last included
    assert len(what["sha256"]) == 64
    cap = cv2.VideoCapture(str(DEMO))
    ok, first = cap.read()
    cap.release()
    assert ok
    f = calibration.frames[0]
    assert f.shape == (3, 576, 768) and f.dtype == np.float32 and f.flags.c_contiguous
    assert 0.0 <= f.min() and f.max() <= 1.0
    np.testing.assert_allclose(f[0], first[:, :, 2] / 255.0, atol=1e-6)  # channel 0 is red: BGR became RGB


def test_calibration_key_changes_with_the_frames(tmp_path: Path, calibration: CalibrationSet) -> None:
    assert read_calibration(DEMO, 3).key == calibration.key  # same file, same frames: same key
    assert read_calibration(DEMO, 4).key != calibration.key  # other frames
    changed = tmp_path / "clip.mp4"
    shutil.copyfile(DEMO, changed)
    with changed.open("ab") as f:  # same decoded frames, other bytes: a new key all the same
        f.write(b"\0")
    assert read_calibration(changed, 3).key != calibration.key
    folder = tmp_path / "images"
    folder.mkdir()
    for i, f in enumerate(read_calibration(DEMO, 5).frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), (f.transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    images = read_calibration(folder, 3)
    assert [name for name, _ in json.loads(images.description)["files"]] == ["00.png", "02.png", "04.png"]
    key = images.key
    cv2.imwrite(str(folder / "02.png"), np.zeros((8, 8, 3), np.uint8))
    assert read_calibration(folder, 3).key != key
    other = tmp_path / "other-kinds"  # every kind `detector run` reads from a folder
    other.mkdir()
    for suffix in (".ppm", ".pgm", ".tif"):  # .pgm is grey: read as BGR like the others
        assert cv2.imwrite(str(other / f"a{suffix}"), np.full((8, 8, 3) if suffix != ".pgm" else (8, 8), 128, np.uint8))
    assert len(read_calibration(other, 3).frames) == 3


def test_calibration_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        read_calibration(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="holds no images"):
        read_calibration(tmp_path)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError):
        read_calibration(tmp_path / "broken.mp4")
    with pytest.raises(EngineError, match="at least one frame"):
        read_calibration(DEMO, 0)


# -- what is int8 and what stays f32 -----------------------------------------------------------------------------------


def runtime_layers(model: Any, shape: tuple[int, int, int]) -> list[tuple[str, str, str]]:
    """(layer type, runtime precision, original names) of each node the CPU plugin compiled."""
    m = model.clone()
    m.reshape(list(shape))
    compiled = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    layers = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layers.append((info["layerType"].astype(str), info["runtimePrecision"].astype(str),
                       info["originalLayersNames"].astype(str)))  # fmt: skip
    return layers


@pytest.mark.parametrize("name", MODELS)
def test_int8_quantizes_the_stacks_and_keeps_predictors_and_nms_f32(
    name: str, quantized: dict[str, tuple[Path, Any]]
) -> None:
    """The fixture quantizes for this CPU: with VNNI/AMX the stacks and Faster R-CNN's box head, predictors
    f32; without (AVX2 only) every convolution of the stacks, RetinaNet's final ones and Faster R-CNN's
    box head made convolutions."""
    from detector.engines.quantize import OVERFLOW_FIX_KEY

    onnx, q = quantized[name]
    no_vnni = str(q.get_rt_info(OVERFLOW_FIX_KEY).astype(str)) == "enable"
    scopes = scopes_for(name, no_vnni)
    assert str(q.get_rt_info(SCOPES_KEY).astype(str)) == ",".join(scopes)
    fp32 = ov.Core().read_model(str(onnx))
    quantized_nodes = int8_node_names(q)
    assert quantized_nodes and all(n.startswith(scopes) for n in quantized_nodes)
    assert not [n for n in quantized_nodes if kept_f32(n, no_vnni)]
    convs = [op.get_friendly_name() for op in fp32.get_ordered_ops() if op.get_type_name() == "Convolution"]
    stacks = [c for c in convs if c.startswith(scopes)]
    int8_convs = {n.removesuffix("/WithoutBiases") for n in quantized_nodes}
    # every convolution in the stacks has its input quantized (ResNet-50 + FPN: 53 + 8 convs at least)
    assert len(stacks) >= 61 and all(c.removesuffix("/WithoutBiases") in int8_convs for c in stacks), sorted(
        set(c.removesuffix("/WithoutBiases") for c in stacks) - int8_convs
    )[:5]
    box_head = [n for n in quantized_nodes if "/roi_heads/box_head/" in n]
    if name.startswith("fasterrcnn"):
        assert any("/fc6/" in n for n in box_head) and any("/fc7/" in n for n in box_head)
    else:
        assert not box_head
    if name.startswith("retinanet") and no_vnni:
        assert sum("cls_logits" in n for n in quantized_nodes) >= 5  # one per level, P3-P7
        assert sum("bbox_reg" in n for n in quantized_nodes) >= 5
    # NMS sits in the If bodies of batched_nms (empty input or not): no quantizer there, f32 boxes and scores
    bodies = [op.get_function(i) for op in q.get_ordered_ops() if op.get_type_name() == "If" for i in (0, 1)]
    nms = [op for body in bodies for op in body.get_ordered_ops() if op.get_type_name() == "NonMaxSuppression"]
    assert nms and all(v.get_element_type() == ov.Type.f32 for op in nms for v in op.input_values()[:2])
    assert not [op for body in bodies for op in body.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    layers = runtime_layers(q, (3, 120, 160))
    if "INT8" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("OpenVINO lists no INT8 capability on this CPU: the graph is quantized, the kernels are not")
    compute = [(t, p, names) for t, p, names in layers if t in ("Convolution", "FullyConnected", "MatMul")]
    int8 = [names for _, p, names in compute if p in ("i8", "u8")]
    assert len(int8) >= 61
    for t, p, names in compute:
        if kept_f32(names, no_vnni):
            assert p == "f32", (t, p, names)
        if "/backbone/body/" in names:
            assert p in ("i8", "u8"), (t, p, names)
    if name.startswith("fasterrcnn"):
        assert any("box_head/fc6" in n for n in int8) and any("box_head/fc7" in n for n in int8)
    if name.startswith("retinanet") and no_vnni:
        assert any("cls_logits" in n for n in int8) and any("bbox_reg" in n for n in int8)


def run_f32(model: Any, *inputs: np.ndarray) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [np.asarray(v) for v in compiled(list(inputs)).values()]


def test_box_head_as_convolutions_computes_what_the_matrix_products_did(quantized: dict[str, tuple[Path, Any]]) -> None:
    """Faster R-CNN's fc6/fc7 rewritten as 7x7 and 1x1 convolutions (for int8 without VNNI): in f32 the
    graph gives the same detections (the sums in another order: boxes within 0.01 px, scores 1e-5);
    a graph without that box head (RetinaNet) is left as it was."""
    onnx, _ = quantized["fasterrcnn_resnet50_fpn"]
    plain = ov.Core().read_model(str(onnx))
    rewritten = ov.Core().read_model(str(onnx))
    assert box_head_as_convolutions(rewritten)
    names = {op.get_friendly_name(): op.get_type_name() for op in rewritten.get_ordered_ops()}
    head = BOX_HEAD_SCOPE[0]
    assert names[f"{head}fc6/Conv"] == names[f"{head}fc7/Conv"] == "Convolution"
    assert not [n for n, t in names.items() if n.startswith(head) and t == "MatMul"]
    ops_by_name = {op.get_friendly_name(): op for op in rewritten.get_ordered_ops()}
    # the bias and ReLU run on the convolutions' 4-D outputs; the pooled features enter fc6 as ROI Align left
    # them (per level, concatenated) and the box head's output is put in proposal order instead
    relus = [op for n, op in ops_by_name.items() if n.startswith(head) and op.get_type_name() == "Relu"]
    assert len(relus) == 2 and all(op.get_output_partial_shape(0).rank.get_length() == 4 for op in relus)
    assert ops_by_name[f"{head}fc6/Conv"].input_value(0).get_node().get_type_name() == "Concat"
    assert names[f"{head}fc7/Rows"] == "Gather"
    for index in (15, 45):
        (boxes, scores, labels), (boxes2, scores2, labels2) = (
            run_f32(plain, frame(index)),
            run_f32(rewritten, frame(index)),
        )
        assert len(scores) > 10
        np.testing.assert_array_equal(labels, labels2)
        np.testing.assert_allclose(scores, scores2, atol=1e-5)
        np.testing.assert_allclose(boxes, boxes2, atol=1e-2)
    retina = ov.Core().read_model(str(quantized["retinanet_resnet50_fpn"][0]))
    before = len(retina.get_ordered_ops())
    assert not box_head_as_convolutions(retina) and len(retina.get_ordered_ops()) == before


def synthetic_box_head(*, transpose_b: bool, fp16_weights: bool = False, rows: str = "") -> Any:
    """A graph shaped like Faster R-CNN v1's box head, named as the export names it: the flatten of pooled
    (N, 4, 3, 3) features, fc6 (36 -> 8), bias (as the ONNX import leaves a Gemm's: ``bias * beta``), ReLU,
    fc7 (8 -> 5), bias, ReLU. ``rows``: the pooled features are first gathered by a second input's row
    indices, after a Concat as the export's level merge does (``"merged"``) or straight (``"gathered"``)."""
    import openvino.opset13 as ops

    head, rng = BOX_HEAD_SCOPE[0], np.random.default_rng(0)

    def weight(rows: int, cols: int) -> Any:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        w = w if transpose_b else np.ascontiguousarray(w.T)
        return ops.convert(ops.constant(w.astype(np.float16)), "f32") if fp16_weights else ops.constant(w)

    pooled = ops.parameter([-1, 4, 3, 3], np.float32, name="pooled")
    order = ops.parameter([-1], np.int64, name="order")
    source = ops.concat([pooled], 0) if rows == "merged" else pooled
    features = ops.gather(source, order, ops.constant(np.int64(0))) if rows else pooled
    flat = ops.reshape(features, ops.constant(np.array([0, -1], np.int64)), True)
    flat.set_friendly_name(f"{head}Flatten")
    x = flat.output(0)
    for fc, (out, cols) in (("fc6", (8, 36)), ("fc7", (5, 8))):
        product = ops.matmul(x, weight(out, cols), False, transpose_b)
        product.set_friendly_name(f"{head}{fc}/Gemm/WithoutBiases")
        bias = ops.multiply(ops.constant(rng.standard_normal(out).astype(np.float32)), ops.constant(np.float32(1.5)))
        x = ops.relu(ops.add(product, bias)).output(0)
    return ov.Model([x], [pooled, order] if rows else [pooled])


@pytest.mark.parametrize("transpose_b", [True, False])
@pytest.mark.parametrize("rows", ["", "merged", "gathered"])
def test_box_head_rewrite_on_any_layout_and_no_proposals(transpose_b: bool, rows: str) -> None:
    """Both weight layouts a MatMul may hold, pooled features given as they are or gathered into another
    order (after the level merge's Concat the gather moves past the box head; another stays before it); no
    proposals at all (N = 0) gives an empty (0, 5) output as before; the bias and ReLU end up on
    the 4-D convolution outputs; weights that are not plain f32 constants (an fp16-compressed IR) leave the
    graph as it was."""
    plain = synthetic_box_head(transpose_b=transpose_b, rows=rows)
    rewritten = synthetic_box_head(transpose_b=transpose_b, rows=rows)
    assert box_head_as_convolutions(rewritten)
    kinds = [op.get_type_name() for op in rewritten.get_ordered_ops() if op.get_type_name() != "Constant"]
    assert "MatMul" not in kinds
    # conv, bias, ReLU, conv, bias, ReLU, then the one flatten (and the merge's gather) at the end
    body = [k for k in kinds if k not in ("Parameter", "Result")]
    head = ["Convolution", "Add", "Relu", "Convolution", "Add", "Relu", "Reshape"]
    before = {"merged": ["Concat"], "gathered": ["Gather"]}.get(rows, [])
    assert body == before + head + (["Gather"] if rows == "merged" else [])
    for n in (3, 0):
        pooled = np.random.default_rng(n).standard_normal((n, 4, 3, 3)).astype(np.float32)
        inputs = [pooled, np.array([2, 0, 1][:n], np.int64)] if rows else [pooled]
        (want,), (got,) = run_f32(plain, *inputs), run_f32(rewritten, *inputs)
        assert got.shape == want.shape == (n, 5)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    compressed = synthetic_box_head(transpose_b=transpose_b, fp16_weights=True)
    names = [op.get_friendly_name() for op in compressed.get_ordered_ops()]
    assert not box_head_as_convolutions(compressed)
    assert [op.get_friendly_name() for op in compressed.get_ordered_ops()] == names


def test_faster_rcnn_for_a_cpu_without_vnni_has_an_int8_box_head(
    quantized: dict[str, tuple[Path, Any]], calibration: CalibrationSet
) -> None:
    """Quantized for a CPU without VNNI (whatever this one is), Faster R-CNN's box head is int8 as
    convolutions, recorded in the model's scopes, runs as int8 kernels where OpenVINO has them, agrees with
    f32 as the other int8 models do; the f32 model handed in is not changed."""
    onnx, _ = quantized["fasterrcnn_resnet50_fpn"]
    given = ov.Core().read_model(str(onnx))
    q = quantize_openvino(given, calibration, no_vnni=True)
    assert not [op for op in given.get_ordered_ops() if op.get_friendly_name().endswith("fc6/Conv")]
    assert str(q.get_rt_info(SCOPES_KEY).astype(str)) == ",".join(scopes_for("fasterrcnn_resnet50_fpn", True))
    head = BOX_HEAD_SCOPE[0]
    assert {f"{head}fc6/Conv", f"{head}fc7/Conv"} <= set(int8_node_names(q))
    result = fidelity(onnx, q, [frame(15), frame(45)], top=10, bf16=False)["int8"]
    assert min(result.fpn_cosine) >= 0.99 and result.matched >= 0.6, result.row()
    assert result.score_diff_median <= 0.1, result.row()
    if "INT8" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        layers = runtime_layers(q, (3, 120, 160))
        fc = [(t, p) for t, p, names in layers if "box_head/fc6" in names or "box_head/fc7" in names]
        assert ("Convolution", "u8") in fc or ("Convolution", "i8") in fc, fc
        assert all(p in ("i8", "u8") for t, p in fc if t == "Convolution"), fc


def test_int8_scopes_of_each_kind_of_cpu() -> None:
    """Both targets, whatever this CPU is: what the scopes admit and leave out."""
    from detector.engines.quantize import ignored_pattern, int8_scopes

    vnni, avx2 = int8_scopes(False), int8_scopes(True)
    assert vnni == INT8_SCOPES and avx2 == INT8_SCOPES_NO_VNNI
    names = {
        "/model/backbone/body/layer1/layer1.0/conv1/Conv": (True, True),
        "/model/rpn/head/conv/conv.0/conv.0.0/Conv": (True, True),
        "/model/rpn/head/cls_logits/Conv": (False, False),
        "/model/roi_heads/box_head/fc6/Gemm": (True, False),
        "/model/roi_heads/box_predictor/cls_score/Gemm": (False, False),
        "/model/head/classification_head/conv/conv.0/conv.0.0/Conv": (True, True),
        "/model/head/classification_head/cls_logits_3/Conv": (False, True),
        "/model/head/regression_head/bbox_reg/Conv": (False, True),
        "/model/transform/Div": (False, False),
        "If_2102": (False, False),
    }
    import re

    for name, (in_vnni, in_avx2) in names.items():
        assert name.startswith(vnni) == in_vnni, name
        assert name.startswith(avx2) == in_avx2, name
        assert (re.match(ignored_pattern(avx2), name) is None) == in_avx2, name


# -- agreement with f32 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_int8_agrees_with_fp32_openvino(name: str, quantized: dict[str, tuple[Path, Any]]) -> None:
    """FPN outputs within 1% of f32 (cosine; the issue measured 0.9987-0.9990 with COCO weights at 320 px).

    The detections: random weights give many near-tied scores and boxes learned from nothing, so a
    0.1% change of the features can reorder them; what is asserted is that most of f32's top-10
    boxes are found again by int8 with the same label at IoU >= 0.5 and that the matched scores move
    by a few hundredths at most, where a broken quantization (or one of the predictors) scatters them.
    Quantized for a CPU without VNNI, every weight has 7 bits (the features' error doubles: FPN cosine
    0.998 against 0.999): there the matched scores may move by up to 0.1 (measured on a real AVX2 CPU,
    random weights, these frames: median 0.050-0.071 over 17-20 matched boxes, by scope)."""
    from detector.engines.quantize import OVERFLOW_FIX_KEY

    onnx, q = quantized[name]
    no_vnni = str(q.get_rt_info(OVERFLOW_FIX_KEY).astype(str)) == "enable"
    frames = [frame(15), frame(45)]  # not calibration frames
    result = fidelity(onnx, q, frames, top=10, bf16=False)["int8"]
    assert result.detections == 20
    assert min(result.fpn_cosine) >= 0.99, result.row()
    assert result.matched >= 0.6, result.row()
    assert result.score_diff_median <= (0.1 if no_vnni else 0.05), result.row()
    if name.startswith("retinanet"):  # its final convolutions, int8 where the CPU has no VNNI
        assert result.head_cosine is not None and set(result.head_cosine) == {"cls", "box"}
        assert min(result.head_cosine.values()) >= 0.99, result.row()
    else:  # Faster R-CNN's predictors see each run's own proposals: not compared
        assert result.head_cosine is None


def test_fidelity_tells_a_different_model_apart(quantized: dict[str, tuple[Path, Any]]) -> None:
    """The measure can fail: another model's int8 graph (other weights) is far from this f32 one."""
    onnx, _ = quantized["fasterrcnn_resnet50_fpn"]
    torch.manual_seed(1)
    cfg = load_config(None, {"model": "fasterrcnn_resnet50_fpn", **SIZES})
    model, names, _ = build_model(cfg)
    for p in model.backbone.fpn.parameters():  # other FPN weights: other features, other boxes
        torch.nn.init.normal_(p, std=0.05)
    other = onnx.with_name("other.onnx")
    export_model(model, cfg, names, other, fmt="onnx", weights_sha="other", progress=False)
    result = fidelity(onnx, ov.Core().read_model(str(other)), [frame(15)], top=10, bf16=False)["int8"]
    assert min(result.fpn_cosine) < 0.9, result.row()


def test_quantized_graph_saves_keeps_dynamic_size_and_runs_in_the_engine(
    tmp_path: Path, quantized: dict[str, tuple[Path, Any]], calibration: CalibrationSet
) -> None:
    from detector.engines.openvino_engine import OpenVINOEngine

    _, q = quantized["retinanet_resnet50_fpn"]
    xml = tmp_path / "int8.xml"
    ov.save_model(q, str(xml), compress_to_fp16=False)
    read = ov.Core().read_model(str(xml))
    assert read.get_rt_info(["detector", "calibration"]).astype(str) == calibration.description
    assert read.input(0).get_partial_shape().is_dynamic
    engine = OpenVINOEngine(xml, precision="fp32")  # int8 comes from the graph; the rest runs with the f32 hint
    for h, w in ((120, 160), (200, 150)):
        out = engine([torch.rand(3, h, w)])[0]
        assert out["boxes"].shape[1] == 4 and len(out["scores"]) == len(out["labels"]) > 0
        assert bool((out["boxes"][:, 2] <= w + 1e-3).all()) and bool((out["boxes"][:, 3] <= h + 1e-3).all())
    assert engine.compiled_sizes == [(120, 160), (200, 150)]


def test_quantize_refuses_what_it_cannot_quantize(tmp_path: Path, calibration: CalibrationSet) -> None:
    with pytest.raises(EngineError, match="cannot read"):
        quantize_openvino(tmp_path / "missing.onnx", calibration)
    with pytest.raises(EngineError, match=r"\(3, H, W\) float32"):
        quantize_openvino(tmp_path / "missing.onnx", [np.zeros((3, 8, 8), np.uint8)])


# -- int8 through the product: config, cache, engine, CLI ----------------------------------------------------------


def image_folder(folder: Path, indices: tuple[int, ...]) -> Path:
    """Frames of the shipped clip saved as JPEGs: a calibration set of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        bgr = (frame(i).transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype(np.uint8)
        cv2.imwrite(str(folder / f"f{i:02d}.jpg"), bgr)
    return folder


def test_int8_registry_model_is_quantized_once_per_calibration_set(
    quantized: dict[str, tuple[Path, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``precision: int8`` picks OpenVINO, exports and quantizes into the cache on first use, reuses the
    entry, and makes a new one for other calibration frames (the calibration is in the cache key)."""
    from detector import Detector
    from detector.engines.load import cache_dir
    from detector.engines.sidecar import read_sidecar

    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "cache"))
    onnx = quantized["retinanet_resnet50_fpn"][0]
    traced: list[Path] = []

    def reuse_trace(model: torch.nn.Module, path: Path) -> None:  # same weights and sizes: the module's trace will do
        traced.append(path)
        shutil.copy(onnx, path)

    monkeypatch.setattr("detector.engines.export._export_onnx", reuse_trace)
    first = image_folder(tmp_path / "cal_a", (5, 25))
    cfg = load_config(None, {"model": "retinanet_resnet50_fpn", **SIZES, "precision": "int8",
                             "calibration": str(first)})  # fmt: skip
    det = Detector.from_config(cfg)
    assert det.engine.kind == "openvino" and det.precision == "int8" and len(traced) == 1
    (entry,) = (cache_dir() / "exports").iterdir()
    sidecar = read_sidecar(entry / "model.xml")
    assert sidecar.precision == "int8" and sidecar.calibration == read_calibration(first).description
    assert len(det(cv2.imread(str(first / "f05.jpg")))) > 0
    Detector.from_config(cfg)
    assert len(traced) == 1, "exported again instead of using the cache"
    Detector.from_config(cfg.replace(calibration=str(image_folder(tmp_path / "cal_b", (15, 45)))))
    assert len(traced) == 2 and len(list((cache_dir() / "exports").iterdir())) == 2


def test_int8_mistakes_are_one_line(
    quantized: dict[str, tuple[Path, Any]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detector.cli import main
    from detector.engines.openvino_engine import OpenVINOEngine, cpu_has_int8_dot_product
    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match="int8 runs on the OpenVINO engine"):
        load_config(None, {"model": "retinanet_resnet50_fpn", "precision": "int8", "engine": "onnxruntime"})
    with pytest.raises(EngineError, match="is not quantized"):
        OpenVINOEngine(quantized["retinanet_resnet50_fpn"][0], precision="int8")  # a float graph
    code = main(["-q", "export", "retinanet_resnet50_fpn", "--weights", "random", "--precision", "int8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "an int8 export is an OpenVINO model" in err, err
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # the flags below are the CPU; no emulation cap
        monkeypatch.delenv(name, raising=False)
    assert not cpu_has_int8_dot_product("flags\t: fpu sse avx2 fma\n")  # AVX2 only: int8 runs, slower (warned)
    assert cpu_has_int8_dot_product("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_has_int8_dot_product("Features\t: fp asimd\n")  # not x86: nothing to warn about


def _int8_weight_range(model: Any) -> int:
    """The largest |value| among the model's int8 weight constants (7-bit weights stay within 64)."""
    peak = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8:
            peak = max(peak, int(np.abs(op.get_data().astype(np.int16)).max()))
    return peak


class _Stop(Exception):
    pass


def _stop(*args: object) -> None:
    raise _Stop


def test_without_vnni_every_layer_gets_7_bit_weights_and_says_so(
    quantized: dict[str, tuple[Path, Any]],
    calibration: CalibrationSet,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CPU without VNNI/AMX (AVX2 only, or oneDNN capped to it) multiplies u8 x s8 into 16-bit sums that
    saturate; NNCF's overflow fix quantizes every layer's weights to 7 bits there. Which one a model got
    follows the CPU it is quantized on, is recorded in the model, and is part of the cache key."""
    from detector.engines import load, quantize

    onnx, default = quantized["retinanet_resnet50_fpn"]
    here = quantize.needs_overflow_fix()
    assert str(default.get_rt_info(quantize.OVERFLOW_FIX_KEY).astype(str)) == ("enable" if here else "default")
    other = quantize_openvino(onnx, calibration, no_vnni=not here)
    fixed, plain = (default, other) if here else (other, default)
    assert _int8_weight_range(fixed) <= 64 < _int8_weight_range(plain), "7-bit weights in every layer, or not"
    assert str(fixed.get_rt_info(quantize.OVERFLOW_FIX_KEY).astype(str)) == "enable"
    # and the scopes of each: RetinaNet's final convolutions int8 only for the CPU without VNNI
    assert any("cls_logits" in n for n in int8_node_names(fixed))
    assert not any("cls_logits" in n for n in int8_node_names(plain))
    # the choice follows oneDNN's ISA cap (an AVX2 cap: no VNNI) and gives another cache entry
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert quantize.needs_overflow_fix()
    keys = []
    monkeypatch.setattr("detector.engines.openvino_engine._said_int8_is_slower", False)
    for cap in ("AVX2", "ALL"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        seen: list[str] = []
        monkeypatch.setattr(load, "cache_key", lambda cfg, sha, fmt, key, seen=seen: seen.append(key) or "x")
        monkeypatch.setattr(load, "_open_cached", _stop)
        cfg = load_config(None, {"model": "retinanet_resnet50_fpn", **SIZES, "engine": "openvino",
                                 "precision": "int8"})  # fmt: skip
        caplog.clear()
        with pytest.raises(_Stop):
            load.load_cached(cfg, progress=False)
        keys.append(seen[0])
        # without VNNI it says int8 will be slower before the export and its quantization, not after
        slower = [r for r in caplog.records if "no int8 dot-product instructions" in r.getMessage()]
        assert len(slower) == (1 if cap == "AVX2" else 0), cap  # said once a process (an AVX2 CPU: in the first)
    assert keys[0] == keys[1] + quantize.NO_VNNI_CACHE_TAG if not here else keys[0] == keys[1], keys


def test_detector_export_int8_says_it_will_be_slower_before_quantizing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """``detector export --precision int8`` on a CPU without int8 dot products (an AVX2 cap here, whatever
    this CPU is) says int8 will be slower there before it builds, exports and quantizes the model; with
    them it says nothing."""
    from detector.engines import export
    from detector.engines.quantize import needs_overflow_fix

    monkeypatch.setattr("detector.models.build.build_model", lambda *args, **kwargs: _stop())
    cfg = load_config(None, {"model": "retinanet_resnet50_fpn", **SIZES, "engine": "openvino", "precision": "int8"})
    for cap, says in (("AVX2", True), ("ALL", False)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        monkeypatch.setattr("detector.engines.openvino_engine._said_int8_is_slower", False)
        if not says and needs_overflow_fix():
            continue  # an AVX2-only CPU: no cap lifts it
        caplog.clear()
        with pytest.raises(_Stop):
            export.export_from_config(cfg, fmt="openvino", out=tmp_path / "m.xml", progress=False)
        assert ("no int8 dot-product instructions" in caplog.text) is says, (cap, caplog.text)
