"""OpenVINO engine: an exported model compiled once per input size and kept.

OpenVINO runs fastest on static shapes, so the model is reshaped to each new
``(H, W)`` and compiled (about a second); the compiled model is kept, so a
video (one size) compiles once and a folder of mixed sizes still works
(the ``max_sizes`` most recently used sizes are kept). ``bf16`` runs the
convolution stacks in bf16 and the predictors, box decoding, scores and NMS in
f32 (:mod:`.openvino_mixed`: the graph cut into segments, each compiled with its
own ``INFERENCE_PRECISION_HINT``); on a CPU without native bf16 this engine says
so and runs f32.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EngineError
from .base import require
from .openvino_mixed import SegmentedRequest, split_by_precision

log = logging.getLogger(__name__)

OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX)."""
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


class OpenVINOEngine:
    """An OpenVINO IR (``.xml``) or ONNX file, on the CPU."""

    kind = "openvino"

    def __init__(self, path: Path, *, precision: str = "fp32", max_sizes: int = 8) -> None:
        ov = require("openvino")
        if precision not in OV_PRECISIONS:
            raise EngineError(f"the openvino engine runs fp32 or bf16, not {precision}; use --precision fp32 or bf16")
        self._ov = ov
        self.core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16(self.core):
            log.warning("this CPU has no native bf16 (OpenVINO: %s); OpenVINO runs in f32",
                        ", ".join(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))  # fmt: skip
            precision = "fp32"
        self.precision = precision
        self.path = path
        try:
            self._model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types for foreign files
            raise EngineError(f"cannot read OpenVINO model {path} ({_first_line(exc)}); re-export it") from None
        inputs = self._model.inputs
        if len(inputs) != 1 or inputs[0].get_partial_shape().rank.get_length() != 3 or len(self._model.outputs) != 3:
            raise EngineError(
                f"{path} does not follow the calling convention (one (3, H, W) image in, boxes/scores/labels out); "
                "export it with `detector export`"
            )
        self._input_shape = inputs[0].get_partial_shape()
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision]}
        self._compiled: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.max_sizes = max_sizes
        self._warned_whole_graph = False
        self._lock = threading.Lock()
        """One infer request per size, shared: calls from several threads (``--detect-threads``)
        take turns (OpenVINO spreads each over the cores itself)."""

    def request_for(self, height: int, width: int) -> Any:
        """The infer request for ``(height, width)`` images, compiled on first use and kept."""
        key = (height, width)
        request = self._compiled.get(key)
        if request is not None:
            self._compiled.move_to_end(key)
            return request
        if not self._input_shape.compatible(self._ov.PartialShape([3, height, width])):
            raise EngineError(
                f"{self.path} takes images of shape {self._input_shape}, not (3, {height}, {width}); "
                "re-export it with `detector export` (exports take any size)"
            )
        model = self._model.clone()
        try:
            model.reshape([3, height, width])
            request = self._compile(model)
        except EngineError:
            raise
        except Exception as exc:
            why = _first_line(exc)
            raise EngineError(f"OpenVINO cannot compile {self.path} for {width}x{height} ({why})") from None
        self._compiled[key] = request
        if len(self._compiled) > self.max_sizes:
            self._compiled.popitem(last=False)
        return request

    def _compile(self, model: Any) -> Any:
        if self.precision != "bf16":
            return self.core.compile_model(model, "CPU", self._config).create_infer_request()
        segments, outputs = split_by_precision(self._ov, model)
        if not any(s.precision == "bf16" for s in segments):
            if not self._warned_whole_graph:
                log.warning("%s: no convolution stacks named as `detector export` names them; the whole graph runs "
                            "in bf16 (scores may tie, boxes may round)", self.path.name)  # fmt: skip
                self._warned_whole_graph = True
            return self.core.compile_model(model, "CPU", self._config).create_infer_request()
        compiled = [
            self.core.compile_model(s.model, "CPU", {**self._config, "INFERENCE_PRECISION_HINT": s.precision})
            for s in segments
        ]  # fmt: skip
        return SegmentedRequest(segments, compiled, outputs)

    @property
    def compiled_sizes(self) -> list[tuple[int, int]]:
        """The ``(H, W)`` sizes compiled and kept, oldest first."""
        return list(self._compiled)

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            x = np.ascontiguousarray(image.detach().cpu().float().numpy())
            with self._lock:
                request = self.request_for(int(x.shape[1]), int(x.shape[2]))
                request.infer({0: x})
                boxes, scores, labels = (np.array(request.get_output_tensor(i).data) for i in range(3))
            results.append({
                "boxes": torch.from_numpy(boxes.astype(np.float32, copy=False)).reshape(-1, 4),
                "scores": torch.from_numpy(scores.astype(np.float32, copy=False)),
                "labels": torch.from_numpy(labels.astype(np.int64, copy=False)),
            })  # fmt: skip
        return results
