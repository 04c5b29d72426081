"""int8 for OpenVINO: NNCF post-training quantization of a ``detector export``-ed graph.

What runs in int8 depends on the CPU the model is quantized for. With int8 dot products (VNNI, AMX)
it follows the one rule of :data:`.base.LOW_PRECISION_MODULES` (the rule the torch engine's autocast
and OpenVINO's bf16 segments use): the convolution stacks -- ResNet-50 + FPN, the RPN's 3x3 conv,
RetinaNet's two head towers -- and Faster R-CNN's two-layer box head (fc6, fc7; at 320 px with 1,000
proposals it costs about as many MACs as the backbone). Without them (AVX2 only), int8 pays for
convolutions only: RetinaNet's final 3x3 convolutions join its towers (:data:`NO_VNNI_MODULES`, with the
measurements), Faster R-CNN's box head is int8 once its matrix products are rewritten as convolutions
(:func:`box_head_as_convolutions`), and every weight gets 7 bits (NNCF's overflow fix).
The graph's nodes carry the torch module scope (``/model/backbone/body/layer1/...``), so every node
outside the chosen scopes is handed to NNCF as ignored: the input transform, the RPN's 1x1
``cls_logits`` / ``bbox_pred``, the ROI head's ``box_predictor`` (and RetinaNet's ``cls_logits`` /
``bbox_reg`` for a VNNI CPU), box decoding, clipping, scores and NMS stay f32. A quantized
convolution's output is dequantized to f32, so scores keep f32 resolution either way.

How the whole graph goes through NNCF: ``nncf.quantize`` on the ONNX-read model failed with
``Could not find a node Unsqueeze_2627 in NNCFGraph`` (the error the issue saw). The graph holds
two ``If`` nodes -- ``batched_nms``'s "no boxes" branch, in the RPN and in the ROI heads -- and
NNCF builds a graph per ``If`` body; OpenVINO's ONNX reader leaves nodes shared between the
main graph and the bodies, so NNCF's graph builder follows an edge into a body and finds a node
its own graph lacks. Neither a static shape nor constant folding removes the ``If`` nodes (their
condition depends on the data). Written as IR and read back, each body has nodes of its own, and
NNCF then quantizes the whole dynamic-shape graph, ``If`` bodies included (nothing in them is
quantized: all ignored). So no split into segments is needed, and the result is one ``ov.Model``
with dynamic height and width, run by the OpenVINO engine like any export (with the f32 hint:
the FakeQuantize nodes make the stacks int8, everything else stays f32).

Calibration: frames spread evenly over a video or a folder of images, as RGB ``(3, H, W)`` float
0..1 (the engines' calling convention; the graph resizes and normalises them itself), with a
description that names the file contents (sha256) and frame indices, for cache keys.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineError, SourceError
from ..io.sources import IMAGE_EXTS
from .base import LOW_PRECISION_MODULES, first_line, graph_scopes, require
from .sidecar import sha256_file

__all__ = [
    "INT8_SCOPES",
    "INT8_SCOPES_NO_VNNI",
    "CalibrationSet",
    "Fidelity",
    "fidelity",
    "int8_node_names",
    "quantize_openvino",
    "read_calibration",
]

INT8_SCOPES = graph_scopes(LOW_PRECISION_MODULES)
"""Node-name prefixes NNCF may quantize in a graph made by ``detector export`` (``SingleImage``
holds the detector as ``model``) for a CPU with int8 dot products (VNNI, AMX). ``roi_heads/box_roi_pool/``
is there for the activation quantizer NNCF puts on the pooled features that feed fc6; ROI Align itself
has no int8 kernel."""

NO_VNNI_MODULES = ("backbone", "rpn.head.conv", "head.classification_head", "head.regression_head")
"""What runs int8 on a CPU without int8 dot products (AVX2 only), measured on a real one (AMD EPYC Zen 3, OpenVINO
2026.4, 320 px, per-node profile): there int8 pays for convolutions only, about 2.2x f32 for the ResNet/FPN stacks.
Faster R-CNN's box head as matrix products would stay f32: OpenVINO runs an int8 fc6 as a weight-compressed f32
matrix product (261 ms against 224 ms f32) and fc7's int8 GEMM is no faster (22 vs 20 ms), while the quantizer on
the pooled features adds 30 ms. RetinaNet's final convolutions (``cls_logits``, ``bbox_reg``: 256 to 819 and 36
channels, 3x3, on every level) join the towers: left f32 they were the largest f32 island (124 ms of 334), int8 they
take 1.73x to 1.95x f32 for the whole model. Their outputs stay f32 (the accumulators are dequantized), so scores
keep f32 resolution. The box head is quantized after all, as convolutions (:func:`box_head_as_convolutions`;
:data:`BOX_HEAD_SCOPE` joins the scopes when it applies)."""

NO_VNNI_CACHE_TAG = "+no-vnni:3"
"""Appended to an int8 export's calibration key when it is quantized for a CPU without VNNI/AMX; the number
is that recipe's version (2: the box head as int8 convolutions; 3: their bias, ReLU and the pooled rows' order
moved so OpenVINO fuses them), so exports of an older recipe are redone."""

INT8_SCOPES_NO_VNNI = graph_scopes(NO_VNNI_MODULES)
"""Node-name prefixes NNCF may quantize for a CPU without VNNI/AMX (see :data:`NO_VNNI_MODULES`)."""

BOX_HEAD_SCOPE = graph_scopes(("roi_heads.box_head",))
"""Faster R-CNN's box head, int8 on a CPU without VNNI too once :func:`box_head_as_convolutions` has made
its two matrix products convolutions (int8 convolutions pay there; int8 matrix products do not)."""


def int8_scopes(no_vnni: bool) -> tuple[str, ...]:
    """The node-name prefixes quantized for a CPU with (``no_vnni`` False) or without int8 dot products."""
    return INT8_SCOPES_NO_VNNI if no_vnni else INT8_SCOPES


def ignored_pattern(scopes: tuple[str, ...]) -> str:
    """Every node name outside ``scopes`` (generated names such as ``If_2102`` included), for NNCF."""
    return "^(?!" + "|".join(re.escape(s) for s in scopes) + ").*"


IMAGE_SUFFIXES = IMAGE_EXTS
"""A calibration folder's images: those ``detector run`` reads from a folder."""
"""Image files a calibration folder may hold (the engines layer does not import ``io``)."""

DEFAULT_FRAMES = 30
"""Calibration frames: the issue's measurement calibrated on 30 frames of vtest.avi."""


# -- calibration --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSet:
    """Frames for NNCF and a description of exactly which ones they are."""

    frames: tuple[np.ndarray, ...]
    """RGB ``(3, H, W)`` float32 in 0..1, C-contiguous."""
    description: str
    """Canonical JSON: kind (video / images), the file contents' sha256, the frame indices or file names."""

    @property
    def key(self) -> str:
        """16 hex digits of the description's sha256: changes whenever the frames would."""
        return hashlib.sha256(self.description.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.frames)


def _rgb_chw(bgr: np.ndarray) -> np.ndarray:
    """An OpenCV BGR uint8 frame as the engines take it (what ``Detector.preprocess`` makes)."""
    rgb = bgr[:, :, ::-1].transpose(2, 0, 1)
    return np.divide(rgb, np.float32(255.0), dtype=np.float32).copy(order="C")


def _spread(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last included."""
    if total <= count:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def _read_video(path: Path, count: int) -> tuple[list[np.ndarray], list[int]]:
    import cv2

    def read(indices: list[int]) -> tuple[list[np.ndarray], int]:
        cap = cv2.VideoCapture(str(path))
        frames, i, wanted = [], 0, set(indices)
        try:
            while i <= indices[-1]:
                ok, frame = cap.read() if i in wanted else (cap.grab(), None)
                if not ok:
                    break
                if frame is not None:
                    frames.append(_rgb_chw(frame))
                i += 1
        finally:
            cap.release()
        return frames, i

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise SourceError(f"cannot open calibration video {path}; pass a video file or a folder of images")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    indices = _spread(max(total, 1), count)
    frames, seen = read(indices)
    if len(frames) < len(indices):  # the container's frame count was wrong: spread over what is there
        indices = _spread(seen, count)
        frames, _ = read(indices) if seen else ([], 0)
    if not frames:
        raise SourceError(f"no frame could be decoded from calibration video {path}")
    return frames, indices


def read_calibration(source: Path | str, count: int = DEFAULT_FRAMES) -> CalibrationSet:
    """``count`` frames spread evenly over a video file or a folder of images (fewer if it has fewer).

    Frames keep their size: the exported graph resizes to its ``min_size`` itself. The description
    holds the sha256 of the video, or of each chosen image, and which frames were taken, so a cache
    key made from it changes when the file, the folder's chosen images or ``count`` do.
    """
    import cv2

    source = Path(source)
    if count < 1:
        raise EngineError(f"calibration needs at least one frame, got {count}")
    if source.is_dir():
        names = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not names:
            raise SourceError(f"calibration folder {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        chosen = [names[i] for i in _spread(len(names), count)]
        frames = []
        for p in chosen:
            image = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"cannot decode calibration image {p}")
            frames.append(_rgb_chw(image))
        what: dict[str, Any] = {"kind": "images", "files": [[p.name, sha256_file(p)] for p in chosen]}
    elif source.is_file():
        frames, indices = _read_video(source, count)
        what = {"kind": "video", "sha256": sha256_file(source), "frames": indices}
    else:
        raise SourceError(f"calibration source {source} does not exist; pass a video file or a folder of images")
    return CalibrationSet(tuple(frames), json.dumps(what, sort_keys=True, separators=(",", ":")))


# -- quantization -------------------------------------------------------------------------------------------------


def _read_unshared(ov: Any, model: Any) -> Any:
    """``model`` written as IR and read back: each ``If`` body then owns its nodes (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="detector-int8-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return ov.Core().read_model(str(xml))  # weights are read into memory; the folder can go


def box_head_as_convolutions(model: Any) -> bool:
    """Rewrite the matrix products of Faster R-CNN's box head as convolutions computing the same sums,
    for int8 on a CPU without VNNI: one on the flattened (N, C, k, k) pooled features (v1's ``fc6``, v2's
    ``box_head.5``) becomes a k x k convolution over the unflattened features (torch flattens C, H, W: the
    weight's order), one on an (N, K) vector (v1's ``fc7``) a 1x1 convolution over (N, K, 1, 1); each
    proposal is a batch item. The per-channel ops after each product (bias, scale, ReLU) move onto the
    convolution's (N, C, 1, 1) output, where OpenVINO fuses them and the next layer's quantizer into it; the
    result is flattened back after them, so what follows is unchanged. Pooled features gathered into
    proposal order (:func:`_row_gather`) enter fc6 as pooled, and the box head's output is gathered instead.
    In place; False, with nothing changed, when the box head has no matrix product or one of
    another shape (a weight that is not a plain f32 constant, say an fp16-compressed IR's).

    Why: on a CPU without VNNI (AVX2 only) OpenVINO has int8 convolution kernels (``jit_avx2_I8``,
    ``jit_avx2_1x1_I8``, about 2x f32) but no int8 matrix product that beats f32, so the box head -- at
    320 px with 1,000 proposals about as many MACs as the backbone in v1 -- stayed f32 and capped int8 at
    1.38x f32 for Faster R-CNN v1. As convolutions it is quantized with the stacks. Measured under
    ``ONEDNN_MAX_CPU_ISA=AVX2`` (which gave the real AVX2 CPUs' 1.38-1.40x before), 320 px, v1: int8
    1.76x f32 at 1,000 proposals, 1.82x at 300 (``benchmarks/int8.py``); with the bias/ReLU and row order
    moved for fusion, 1.88x and 1.91x. In f32 the k x k form ran 2.6x
    slower than the matrix product, and with VNNI the int8 matrix product is faster than the int8
    convolution (148 against 263 ms): only the graph quantized for a CPU without VNNI is rewritten."""
    require("openvino")
    import openvino.opset13 as ops

    head = BOX_HEAD_SCOPE[0]
    products = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
                and op.get_friendly_name().startswith(head)]  # fmt: skip
    plan = []
    for product in products:
        attributes = product.get_attributes()
        weight = product.input_value(1).get_node()
        if attributes.get("transpose_a") or weight.get_type_name() != "Constant":
            return False
        w = weight.get_data()
        w = w if attributes.get("transpose_b") else w.T
        if w.dtype != np.float32 or w.ndim != 2:
            return False
        features = product.input_value(0)
        if features.get_partial_shape().rank.is_dynamic or features.get_partial_shape().rank.get_length() != 2:
            return False
        flatten = features.get_node()
        shape = flatten.input_value(0).get_partial_shape() if flatten.get_type_name() == "Reshape" else None
        if (
            shape is not None
            and shape.rank.is_static
            and shape.rank.get_length() == 4
            and all(d.is_static for d in shape[1:])
        ):  # the flatten of pooled (N, C, k, k) features
            c, kh, kw = (d.get_length() for d in shape[1:])
            if c * kh * kw != w.shape[1]:
                return False
            pooled, rows = _row_gather(flatten.input_value(0))
            plan.append((product, pooled, w.reshape(w.shape[0], c, kh, kw), rows))
        else:
            plan.append((product, None, w.reshape(*w.shape, 1, 1), None))
    if not plan:
        return False
    made: dict[int, tuple[Any, Any]] = {}  # an output node made here (instance id) -> its (N, C, 1, 1) source, rows
    for product, unflattened, kernel, rows in plan:
        if unflattened is None:
            vector = product.input_value(0)
            if vector.get_node().get_instance_id() in made:  # the previous rewritten layer: no flatten, unflatten
                unflattened, rows = made[vector.get_node().get_instance_id()]
            else:
                shape = ops.constant(np.array([-1, kernel.shape[1], 1, 1], np.int64))
                unflattened = ops.reshape(vector, shape, False).output(0)
        weights = ops.constant(np.ascontiguousarray(kernel, np.float32))
        conv = ops.convolution(unflattened, weights, [1, 1], [0, 0], [0, 0], [1, 1])
        scope = product.get_friendly_name().split("/Gemm")[0].split("/MatMul")[0]
        conv.set_friendly_name(f"{scope}/Conv")
        # bias, scale and ReLU after the product act per channel: done on the (N, C, 1, 1) output, so OpenVINO
        # fuses them, and the next layer's quantizer, into the convolution (flattened, they ran apart: 11 ms
        # of 450 for the quantizer between fc6 and fc7 alone, AVX2, 1,000 proposals)
        x, last = conv.output(0), product
        for i, (op, constant) in enumerate(_per_channel_tail(product, kernel.shape[0])):
            kind = op.get_type_name()
            node = ops.relu(x) if constant is None else getattr(ops, kind.lower())(x, ops.constant(constant))
            node.set_friendly_name(f"{scope}/{kind}_{i}")
            x, last = node.output(0), op
        out = ops.reshape(x, ops.constant(np.array([-1, kernel.shape[0]], np.int64)), False)
        out.set_friendly_name(f"{scope}/Flatten")
        if rows is not None:  # the rows the pooled features were gathered by, taken here instead
            out = ops.gather(out, rows, ops.constant(np.int64(0)))
            out.set_friendly_name(f"{scope}/Rows")
        made[out.get_instance_id()] = (x, rows)
        for target in list(last.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
    model.validate_nodes_and_infer_types()
    return True


def _row_gather(pooled: Any) -> tuple[Any, Any]:
    """``(features, rows)`` when ``pooled`` is ``Gather(Concat(...), rows, axis 0)`` -- Faster R-CNN's export
    puts each FPN level's pooled boxes back in proposal order so (:func:`detector.engines.export.merge_levels`,
    whose rows are a permutation: an index out of range would give a zero row of features in the original
    graph but a zero box-head output here) -- else ``(pooled, None)``. The box head treats each row alone, so
    it may run on the rows as pooled and take them in order from its (N, 1024) output: a gather of 1,024
    values a row instead of 12,544, and no layout change between ROI Align and fc6's convolution (20 ms of
    450 for the pooled features' gather, its layout changes and its quantizer, AVX2, 1,000 proposals)."""
    node = pooled.get_node()
    if node.get_type_name() != "Gather" or node.get_attributes().get("batch_dims", 0) != 0:
        return pooled, None
    if node.input_value(0).get_node().get_type_name() != "Concat":  # not the export's level merge
        return pooled, None
    axis = _constant(node.input_value(2))
    rows = node.input_value(1)
    if axis is None or axis.size != 1 or int(axis.reshape(())) != 0 or rows.get_partial_shape().rank.get_length() != 1:
        return pooled, None
    return node.input_value(0), rows


def _constant(output: Any) -> np.ndarray | None:
    """The value of a constant, or of products and sums of constants (an exported Gemm's ``bias * beta``)."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data()
    if kind in ("Add", "Multiply"):
        a, b = _constant(node.input_value(0)), _constant(node.input_value(1))
        if a is None or b is None or a.dtype != b.dtype:
            return None
        return a + b if kind == "Add" else a * b
    return None


def _per_channel_tail(product: Any, channels: int) -> list[tuple[Any, np.ndarray | None]]:
    """The ops after a matrix product's (N, C) output that act on each channel alone -- ``Add`` or
    ``Multiply`` with an f32 constant (or constant expression) of C values or one, ``Relu`` -- each the only
    consumer of the one before, with that constant shaped (1, C, 1, 1) (``None`` for ``Relu``)."""
    chain: list[tuple[Any, np.ndarray | None]] = []
    output = product.output(0)
    while True:
        targets = list(output.get_target_inputs())
        if len(targets) != 1:
            return chain
        op = targets[0].get_node()
        kind = op.get_type_name()
        if kind == "Relu":
            chain.append((op, None))
        elif kind in ("Add", "Multiply"):
            data = _constant(op.input_value(1 - targets[0].get_index()))
            if (
                data is None
                or data.dtype != np.float32
                or data.ndim > 2
                or data.size not in (1, channels)
                or (data.size == channels and data.shape[-1] != channels)
            ):
                return chain
            chain.append((op, np.ascontiguousarray(data.reshape(1, -1, 1, 1))))
        else:
            return chain
        output = op.output(0)


def _frames_for(calibration: Iterable[np.ndarray]) -> list[np.ndarray]:
    frames = []
    for frame in calibration:
        if frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != np.float32:
            raise EngineError(f"calibration frames are RGB (3, H, W) float32 in 0..1, got {frame.dtype} {frame.shape}")
        frames.append(np.ascontiguousarray(frame))
    if not frames:
        raise EngineError("the calibration set is empty")
    return frames


def int8_node_names(model: Any) -> list[str]:
    """Names of the convolutions and matrix products NNCF quantized: those whose weights it stored as an
    int8 constant (dequantized by Convert / Subtract / Multiply; their activations get a FakeQuantize
    wherever NNCF places it best, e.g. before a MaxPool or on the pooled features ahead of a flatten)."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul") or op.get_input_size() < 2:
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8"):
            names.append(op.get_friendly_name())
    return sorted(names)


OVERFLOW_FIX_KEY = ["detector", "overflow_fix"]
"""Where a quantized model records whether it was quantized for a CPU without VNNI/AMX (``enable``: 7-bit
weights, NNCF's overflow fix, :data:`INT8_SCOPES_NO_VNNI` and the box head as convolutions) or with them
(``default``)."""
SCOPES_KEY = ["detector", "int8_scopes"]
"""Where a quantized model records the node-name prefixes that were quantized (comma-separated)."""


def needs_overflow_fix() -> bool:
    """Whether int8 here runs without VNNI/AMX (an AVX2-only CPU, or oneDNN capped to one), so the model is
    quantized for such a CPU: its kernels multiply u8 x s8 pairs into 16-bit sums that saturate
    (``vpmaddubsw``), so NNCF's overflow fix (7-bit weights in every layer) is needed, and only the
    convolutions gain from int8 there (:data:`NO_VNNI_MODULES`). Measured under ``ONEDNN_MAX_CPU_ISA=AVX2``:
    RetinaNet's FPN cosine to f32 0.979-0.992 without the fix, against 0.999 with VNNI; on a real AVX2 CPU
    0.998 with it."""
    from .openvino_engine import cpu_has_int8_dot_product

    return not cpu_has_int8_dot_product()


def quantize_openvino(
    model: Any,
    calibration: Iterable[np.ndarray] | CalibrationSet,
    *,
    subset_size: int | None = None,
    fast_bias_correction: bool = True,
    no_vnni: bool | None = None,
) -> Any:
    """NNCF post-training int8 quantization of a ``detector export``-ed graph (``ov.Model``, ``.onnx`` or ``.xml``).

    Only the nodes under :func:`int8_scopes` are quantized; the graph keeps its dynamic height and width
    and its one-image calling convention. ``subset_size`` defaults to every calibration frame. The
    calibration description (for a :class:`CalibrationSet`) is stored in the model's ``rt_info`` under
    ``detector/calibration`` and travels with a saved IR. Save the result with
    ``ov.save_model(q, path, compress_to_fp16=False)``; run it with the f32 inference hint.
    ``no_vnni`` (default: :func:`needs_overflow_fix`, i.e. this CPU has no VNNI/AMX) quantizes for a CPU
    without int8 dot products: every layer's weights to 7 bits, so its sums do not saturate, and the scopes
    of :data:`INT8_SCOPES_NO_VNNI`, plus Faster R-CNN's box head rewritten by :func:`box_head_as_convolutions`
    (:data:`BOX_HEAD_SCOPE`); recorded in ``rt_info`` (:data:`OVERFLOW_FIX_KEY`, :data:`SCOPES_KEY`).
    """
    ov = require("openvino")
    nncf = require("nncf")
    frames = _frames_for(calibration.frames if isinstance(calibration, CalibrationSet) else calibration)
    if isinstance(model, (str, Path)):
        try:
            model = ov.Core().read_model(str(model))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types for foreign files
            raise EngineError(f"cannot read {model} ({first_line(exc)}); re-export it") from None
    if len(model.inputs) != 1 or len(model.outputs) != 3:
        raise EngineError("int8 quantizes graphs made by `detector export` (one image in, boxes/scores/labels out)")
    model = _read_unshared(ov, model)  # a copy: the caller's model is never changed
    fix = needs_overflow_fix() if no_vnni is None else no_vnni
    scopes = int8_scopes(fix)
    if fix and box_head_as_convolutions(model):  # Faster R-CNN's box head: int8 as convolutions
        scopes += BOX_HEAD_SCOPE
    quantized = nncf.quantize(
        model,
        nncf.Dataset(frames),
        subset_size=subset_size or len(frames),
        fast_bias_correction=fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(patterns=[ignored_pattern(scopes)], validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE) if fix else None,
    )
    if not any(name.startswith(scopes) for name in int8_node_names(quantized)):
        raise EngineError("no convolution stacks named as `detector export` names them; nothing was quantized")
    if isinstance(calibration, CalibrationSet):
        quantized.set_rt_info(calibration.description, ["detector", "calibration"])
    quantized.set_rt_info(",".join(scopes), SCOPES_KEY)
    quantized.set_rt_info("enable" if fix else "default", OVERFLOW_FIX_KEY)
    return quantized


# -- fidelity -----------------------------------------------------------------------------------------------------

FPN_OUTPUT = re.compile(
    r"^/model/backbone/fpn/(layer_blocks\.\d+/layer_blocks\.\d+\.0/Conv|extra_blocks/(MaxPool|p6/Conv|p7/Conv))$"
)
"""The nodes whose outputs are the FPN's levels: P2-P5 (``layer_blocks``) and the extra level(s):
Faster R-CNN's max-pooled P6, RetinaNet's P6/P7 convs (in the IR, a Conv's bias Add keeps its name)."""


def _fpn_outputs(model: Any) -> list[Any]:
    found = {op.get_friendly_name(): op for op in model.get_ordered_ops() if FPN_OUTPUT.match(op.get_friendly_name())}
    if not found:
        raise EngineError("no FPN outputs named as `detector export` names them")
    return [found[name].output(0) for name in sorted(found)]


HEAD_OUTPUT = re.compile(r"^/model/head/(classification_head/cls_logits|regression_head/bbox_reg)(_\d+)?/Conv$")
"""RetinaNet's final convolutions, one per level (the class logits and box deltas of every anchor): dense,
so f32 and int8 outputs compare position by position. (Faster R-CNN's predictors see each run's own
proposals, which differ: their outputs do not line up.)"""


def _head_outputs(model: Any) -> list[tuple[str, Any]]:
    """``(kind, output)`` of RetinaNet's final convolutions (kind ``cls`` or ``box``); none for Faster R-CNN."""
    found = []
    for op in model.get_ordered_ops():
        m = HEAD_OUTPUT.match(op.get_friendly_name())
        if m is not None:
            found.append(("cls" if "cls_logits" in m[1] else "box", op.output(0)))
    return found


Outputs = list[tuple[list[np.ndarray], list[np.ndarray], list[tuple[str, np.ndarray]]]]
"""Per frame: (boxes, scores, labels), the FPN levels and the (kind, value) of RetinaNet's head outputs."""


def _run(ov: Any, model: Any, frames: Sequence[np.ndarray], hint: str) -> Outputs:
    """Per frame: (boxes, scores, labels), FPN levels, head outputs -- ``model`` compiled once per frame size."""
    core = ov.Core()
    compiled: dict[tuple[int, ...], Any] = {}
    out = []
    for frame in frames:
        if frame.shape not in compiled:
            m = model.clone()
            levels = m.add_outputs(_fpn_outputs(m))
            heads = _head_outputs(m)
            m.add_outputs([o for _, o in heads])
            m.reshape(list(frame.shape))
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
            request = core.compile_model(m, "CPU", config).create_infer_request()
            compiled[frame.shape] = (request, len(levels), [kind for kind, _ in heads])
        request, n, kinds = compiled[frame.shape]
        request.infer({0: frame})
        values = [np.array(request.get_output_tensor(i).data) for i in range(3 + n + len(kinds))]
        out.append((values[:3], values[3 : 3 + n], list(zip(kinds, values[3 + n :], strict=True))))
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - w * h
    return w * h / np.maximum(union, 1e-9)


@dataclass(frozen=True)
class Fidelity:
    """One precision against OpenVINO f32 on the same frames."""

    precision: str
    fpn_cosine: tuple[float, ...]
    """Per FPN level (P2..P6, RetinaNet P3..P7), the lowest cosine similarity over the frames."""
    matched: float
    """Share of f32's top detections (per frame) with a same-label detection at IoU >= 0.5."""
    iou_median: float
    """Median best same-label IoU over f32's top detections (0 where none has the label)."""
    score_diff_median: float
    """Median |score - f32 score| over the matched detections (``nan`` if none matched)."""
    score_diff_max: float
    detections: int
    """How many f32 top detections were compared (all frames)."""
    head_cosine: dict[str, float] | None = None
    """RetinaNet: the lowest cosine similarity over levels and frames of its class logits (``cls``) and box
    deltas (``box``); None where not measured (Faster R-CNN, or not given the head outputs)."""

    def row(self) -> str:
        cos = " ".join(f"{c:.4f}" for c in self.fpn_cosine)
        if self.head_cosine:
            cos += "; head cosine " + " ".join(f"{k} {v:.4f}" for k, v in sorted(self.head_cosine.items()))
        return (f"{self.precision}: FPN cosine {cos}; top {self.detections} f32 detections: "
                f"{self.matched:.0%} matched (IoU >= 0.5), median IoU {self.iou_median:.3f}, "
                f"|d score| median {self.score_diff_median:.4f} max {self.score_diff_max:.4f}")  # fmt: skip


def _compare(
    precision: str,
    ref: Outputs,
    dets: list[list[np.ndarray]],
    levels: list[list[np.ndarray]] | None,
    top: int,
    heads: list[list[tuple[str, np.ndarray]]] | None = None,
) -> Fidelity:
    ious, diffs = [], []
    for (ref_dets, _, _), (boxes, scores, labels) in zip(ref, dets, strict=True):
        r_boxes, r_scores, r_labels = ref_dets
        for k in np.argsort(-r_scores, kind="stable")[:top]:
            same = labels == r_labels[k]
            if not same.any():
                ious.append(0.0)
                continue
            overlap = _iou(r_boxes[k], boxes[same].reshape(-1, 4))
            best = int(overlap.argmax())
            ious.append(float(overlap[best]))
            if overlap[best] >= 0.5:
                diffs.append(abs(float(scores[same][best]) - float(r_scores[k])))
    cos: tuple[float, ...] = ()
    if levels is not None:
        per_frame = [
            [_cosine(a, b) for a, b in zip(r[1], got, strict=True)] for r, got in zip(ref, levels, strict=True)
        ]
        cos = tuple(min(c) for c in zip(*per_frame, strict=True))
    head: dict[str, float] | None = None
    if heads is not None and any(r[2] for r in ref):
        head = {}
        for r, got in zip(ref, heads, strict=True):
            for (kind, a), (_, b) in zip(r[2], got, strict=True):
                head[kind] = min(head.get(kind, 1.0), _cosine(a, b))
    iou = np.array(ious)
    return Fidelity(
        precision=precision,
        fpn_cosine=cos,
        matched=float((iou >= 0.5).mean()) if len(iou) else float("nan"),
        iou_median=float(np.median(iou)) if len(iou) else float("nan"),
        score_diff_median=float(np.median(diffs)) if diffs else float("nan"),
        score_diff_max=float(max(diffs)) if diffs else float("nan"),
        detections=len(iou),
        head_cosine=head,
    )


def fidelity(
    fp32: Path,
    int8: Any,
    frames: Sequence[np.ndarray],
    *,
    top: int = 10,
    bf16: bool = True,
) -> dict[str, Fidelity]:
    """int8 (and bf16) against OpenVINO f32 on ``frames``: FPN-output cosine similarity and matched top boxes.

    ``fp32`` is the exported file; ``int8`` its quantized ``ov.Model`` (or IR path), run with the f32 hint
    as the engine runs it. bf16 (only where the CPU has native bf16) is the project's engine -- stacks
    bf16, predictors and post-processing f32 (:mod:`.openvino_mixed`) -- for the detections; its FPN
    levels come from the whole graph compiled under the bf16 hint, where the stacks run alike.
    """
    ov = require("openvino")
    import torch

    from .openvino_engine import OpenVINOEngine, cpu_has_bf16

    core = ov.Core()
    frames = _frames_for(frames)
    base = core.read_model(str(fp32))
    q = core.read_model(str(int8)) if isinstance(int8, (str, Path)) else int8
    ref = _run(ov, base, frames, "f32")
    got = _run(ov, q, frames, "f32")
    result = {"int8": _compare("int8", ref, [g[0] for g in got], [g[1] for g in got], top, [g[2] for g in got])}
    if bf16 and cpu_has_bf16(core):
        levels = [g[1] for g in _run(ov, base, frames, "bf16")]
        engine = OpenVINOEngine(Path(fp32), precision="bf16")
        dets = []
        for frame in frames:
            d = engine([torch.from_numpy(frame)])[0]
            dets.append([d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()])
        result["bf16"] = _compare("bf16", ref, dets, levels, top)
    return result
