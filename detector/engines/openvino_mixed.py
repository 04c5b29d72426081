"""bf16 in OpenVINO where it is safe, f32 where results are decided: the graph cut into segments.

OpenVINO's ``INFERENCE_PRECISION_HINT`` is one setting for a whole compiled
model. Its CPU plugin keeps the graph's tail in f32 only back to the last
convolution or matrix product, so the final class and box predictors themselves
ran in bf16 and their outputs carried bf16's 8-bit mantissa: 100 RetinaNet scores
came out as 26-51 distinct values. The runtime attribute that keeps a node's
precision differs between OpenVINO releases and the Python API cannot set it,
so instead the graph is cut: each node belongs to the bf16 part (the
convolution stacks of ``LOW_PRECISION_MODULES``, plus Faster R-CNN's whole RPN,
told by the scope names the ONNX export gives nodes) or to the f32 rest, and
every run of nodes of one kind becomes a model of its own, compiled with that
precision and run in order, tensors handed from one to the next: the transform
(f32), the stacks (bf16), the final predictors, box decoding, scores and NMS (f32).

Why the RPN goes with the bf16 part: cut after it, the FPN's feature maps would
be handed to a separate ROI pooling model, and ROI Align reading a planar input
tensor ran 4x slower than inside one graph (about 26 ms against 7 ms for 317
boxes). Inside the bf16 segment the plugin still decodes proposals and runs their
NMS in f32 (they are outputs of the segment), but the RPN's two 1x1 predictors
and the pyramid-level choice of each box run in bf16: objectness near-ties may
pick other proposals than torch's fp32 RPN does. Final scores and boxes are f32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import LOW_PRECISION_MODULES, graph_scopes, require

BF16_SCOPES = graph_scopes((*LOW_PRECISION_MODULES, "rpn"))
"""Node-name prefixes of the low-precision modules in a graph exported by ``detector export``
(``SingleImage`` holds the detector as ``model``; the ONNX exporter names nodes by module scope)."""


def node_precision(name: str) -> str | None:
    """``bf16`` or ``f32`` for a node the export named after its module, ``None`` for a generated name
    (``Constant_12``, ``If_2102``): such a node goes with its inputs."""
    if not name.startswith("/model/"):
        return None
    return "bf16" if name.startswith(BF16_SCOPES) else "f32"


@dataclass
class Segment:
    """One run of same-precision nodes: a model of its own, its inputs named by the outputs that feed it."""

    precision: str
    model: Any
    """``ov.Model``: parameters are cut edges (or the image), results are cut edges (or the detections)."""
    sources: list[tuple[int, int] | None]
    """Per parameter: ``(segment, result index)`` that produces it, or ``None`` for the image."""


def _kind(segment: int) -> str:
    return "f32" if segment % 2 == 0 else "bf16"


def split_by_precision(ov: Any, model: Any) -> tuple[list[Segment], list[tuple[int, int]]]:
    """Cut ``model`` (already reshaped; not reused afterwards) into alternating f32 / bf16 segments.

    A node goes in the first segment of its kind (even numbers f32, odd bf16) at or after all of its
    inputs' segments, so no edge runs backwards. Returns the non-empty segments in order and, per
    output of ``model``, the ``(segment, result index)`` that holds it.
    """
    passes = require("openvino.passes")
    manager = passes.Manager()  # with static shapes, shape arithmetic folds away instead of crossing cuts
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
    ops = model.get_ordered_ops()  # topological
    seg: dict[str, int] = {}
    for op in ops:
        kind = op.get_type_name()
        if kind in ("Constant", "Result"):
            continue
        inputs = [seg[v.get_node().get_friendly_name()] for v in op.input_values()
                  if v.get_node().get_type_name() != "Constant"]  # fmt: skip
        s = max(inputs, default=0)
        want = "f32" if kind == "Parameter" else node_precision(op.get_friendly_name())
        if want is not None and _kind(s) != want:
            s += 1
        seg[op.get_friendly_name()] = s
    count = max(seg.values()) + 1
    params: list[list[Any]] = [[] for _ in range(count)]
    sources: list[list[tuple[int, int] | None]] = [[] for _ in range(count)]
    results: list[list[Any]] = [[] for _ in range(count)]
    for image in model.get_parameters():
        params[seg[image.get_friendly_name()]].append(image)
        sources[seg[image.get_friendly_name()]].append(None)
    final = []
    for out in model.get_results():
        s = seg[out.input_value(0).get_node().get_friendly_name()]
        results[s].append(out)
        final.append((s, len(results[s]) - 1))
    cut: dict[tuple[str, int, int], Any] = {}  # (producer, its output, consumer segment) -> parameter
    for op in ops:
        name = op.get_friendly_name()
        if name not in seg:
            continue
        for port, value in enumerate(op.input_values()):
            src = value.get_node()
            if src.get_type_name() == "Constant" or seg[src.get_friendly_name()] == seg[name]:
                continue
            a, b = seg[src.get_friendly_name()], seg[name]
            key = (src.get_friendly_name(), value.get_index(), b)
            if key not in cut:  # one result in the producer's segment, one parameter in the consumer's
                cut[key] = ov.opset13.parameter(value.get_partial_shape(), value.get_element_type())
                results[a].append(ov.opset13.result(value))
                params[b].append(cut[key])
                sources[b].append((a, len(results[a]) - 1))
            op.input(port).replace_source_output(cut[key].output(0))
    kept = [s for s in range(count) if results[s]]
    index = {s: i for i, s in enumerate(kept)}
    segments = [
        Segment(_kind(s), ov.Model(results[s], params[s], f"{_kind(s)}_segment{s}"),
                [None if src is None else (index[src[0]], src[1]) for src in sources[s]])
        for s in kept
    ]  # fmt: skip
    return segments, [(index[s], i) for s, i in final]


class SegmentedRequest:
    """Infer requests of the compiled segments, run in order; the last holds the detections."""

    def __init__(self, segments: list[Segment], compiled: list[Any], outputs: list[tuple[int, int]]) -> None:
        self.segments = segments
        self.compiled = compiled
        self.requests = [c.create_infer_request() for c in compiled]
        self.outputs = outputs

    def infer(self, inputs: dict[int, Any]) -> None:
        for segment, request in zip(self.segments, self.requests, strict=True):
            for port, src in enumerate(segment.sources):
                if src is None:
                    request.set_input_tensor(port, self._image(inputs[0]))
                else:
                    request.set_input_tensor(port, self.requests[src[0]].get_output_tensor(src[1]))
            request.infer()

    @staticmethod
    def _image(array: Any) -> Any:
        return require("openvino").Tensor(array, shared_memory=True)

    def get_output_tensor(self, index: int) -> Any:
        s, i = self.outputs[index]
        return self.requests[s].get_output_tensor(i)
