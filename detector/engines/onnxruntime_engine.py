"""ONNX Runtime engine: an exported ``.onnx`` file on the CPU, any input size (dynamic axes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError
from .base import first_line, require


class OnnxRuntimeEngine:
    """An exported ``.onnx`` file run by ONNX Runtime's CPU provider (fp32 only)."""

    kind = "onnxruntime"

    def __init__(self, path: Path, *, precision: str = "fp32") -> None:
        ort = require("onnxruntime")
        if precision != "fp32":
            raise EngineError(
                f"the onnxruntime engine runs fp32 on the CPU, not {precision}; "
                "use --precision fp32, or --engine openvino for bf16"
            )
        self.precision = precision
        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings (e.g. unused initialisers) are not the user's to fix
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise EngineError(f"cannot load ONNX model {path} ({first_line(exc)}); re-export it") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 3 or len(outputs) != 3:
            raise EngineError(
                f"{path} does not follow the calling convention (one (3, H, W) image in, boxes/scores/labels out); "
                "export it with `detector export`"
            )
        self._input = inputs[0].name
        self._static = [d if isinstance(d, int) else None for d in inputs[0].shape]

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            x = np.ascontiguousarray(image.detach().cpu().float().numpy())
            if any(s is not None and s != d for s, d in zip(self._static, x.shape, strict=True)):
                raise EngineError(
                    f"{self.path} takes images of shape {tuple(self._static)}, not {tuple(x.shape)}; "
                    "re-export it with `detector export` (exports take any size)"
                )
            boxes, scores, labels = self.session.run(None, {self._input: x})
            results.append({
                "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4),
                "scores": torch.from_numpy(np.asarray(scores, dtype=np.float32)),
                "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            })  # fmt: skip
        return results
