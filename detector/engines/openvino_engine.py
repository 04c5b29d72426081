"""OpenVINO engine: an exported model compiled once per input size and kept.

OpenVINO runs fastest on static shapes, so the model is reshaped to each new
``(H, W)`` and compiled (about a second); the compiled model is kept, so a
video (one size) compiles once and a folder of mixed sizes still works
(the ``max_sizes`` most recently used sizes are kept). ``bf16`` runs the
convolution stacks in bf16 and the predictors, box decoding, scores and NMS in
f32 (:mod:`.openvino_mixed`: the graph cut into segments, each compiled with its
own ``INFERENCE_PRECISION_HINT``); on a CPU without native bf16 this engine says
so and runs f32. ``int8`` is in the graph itself (NNCF, :mod:`.quantize`): a quantized
graph runs int8 under the f32 hint, whatever was asked, and a float graph asked for
int8 is refused.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EngineError
from .base import first_line, require
from .openvino_mixed import SegmentedRequest, split_by_precision

log = logging.getLogger(__name__)

_said_int8_is_slower = False


def say_int8_is_slower_here() -> None:
    """Warn, once per process, that this CPU has no int8 dot products: said before a long quantization
    (``engines.load``) as well as when an int8 model opens, so once is enough."""
    global _said_int8_is_slower
    if not _said_int8_is_slower:
        _said_int8_is_slower = True
        log.warning("this CPU has no int8 dot-product instructions (%s): int8 runs, but slower than on one "
                    "that has them", " / ".join(INT8_DOT_PRODUCT))  # fmt: skip


OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""Asked precision -> inference hint. An int8 model holds its quantization in the graph and runs under
the f32 hint: the stacks run int8, everything else f32."""
INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8")
"""x86 flags of int8 dot-product instructions; without them OpenVINO still runs int8, slower."""
ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"
ISA_CAP_ENVS = (ISA_CAP_ENV, "DNNL_MAX_CPU_ISA")
"""oneDNN reads the first of these that is set."""
"""oneDNN's cap on the instruction sets its kernels use; OpenVINO's CPU plugin honours it (e.g. ``AVX2``
runs ``jit_avx2_I8`` kernels where ``brgconv_avx512_I8`` ran), so it can emulate an older CPU."""
_AVX2 = {"avx2"}
_AVX512 = {"avx2", "avx512_vnni", "avx512_bf16"}
_AVX10 = {*_AVX512, "avx_vnni"}  # oneDNN's AVX10 / FP16 and AMX levels include the VEX-encoded VNNI too
_AMX = {*_AVX10, "amx_int8", "amx_bf16"}
_CAP_ALLOWS: dict[str, set[str]] = {
    "SSE41": set(), "AVX": set(), "AVX2": _AVX2, "AVX2_VNNI": {*_AVX2, "avx_vnni"},
    "AVX2_VNNI_2": {*_AVX2, "avx_vnni"}, "AVX512_CORE": _AVX2, "AVX512_CORE_VNNI": {*_AVX2, "avx512_vnni"},
    "AVX512_CORE_BF16": _AVX512, "AVX512_CORE_FP16": _AVX10, "AVX10_1_512": _AVX10, "AVX512_CORE_AMX": _AMX,
    "AVX10_1_512_AMX": _AMX, "AVX512_CORE_AMX_FP16": _AMX, "AVX10_1_512_AMX_FP16": _AMX, "AVX10_2_512": _AVX10,
    "AVX10_2_512_AMX_2": _AMX,
}  # fmt: skip
"""Under each oneDNN ISA cap, which of the flags this module asks about its kernels may use."""


def isa_allows(flag: str, cap: str | None = None) -> bool:
    """Whether oneDNN's ISA cap (``$ONEDNN_MAX_CPU_ISA``, or ``cap``) lets kernels use ``flag``'s
    instructions: True without a cap, or for a cap or flag it does not know (nothing is made up)."""
    if cap is None:
        cap = next((os.environ[name] for name in ISA_CAP_ENVS if os.environ.get(name)), "")
    cap = cap.strip().upper()
    if cap not in _CAP_ALLOWS or flag not in _AMX:
        return True
    return flag in _CAP_ALLOWS[cap]


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX, and allowed by the
    ISA cap, which the plugin's capability list does not reflect)."""
    if not isa_allows("avx512_bf16") and not isa_allows("amx_bf16"):
        return False
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def _cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The x86 flags of ``/proc/cpuinfo`` (empty where there are none: not Linux, not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    return {w for line in cpuinfo.splitlines() if line.startswith("flags") for w in line.split(":", 1)[1].split()}


def int8_dot_product_flags(cpuinfo: str | None = None, cap: str | None = None) -> list[str]:
    """This CPU's int8 dot-product flags (VNNI, AMX) that OpenVINO's int8 kernels use (within the ISA cap)."""
    flags = _cpu_flags(cpuinfo)
    return [flag for flag in INT8_DOT_PRODUCT if flag in flags and isa_allows(flag, cap)]


def cpu_has_int8_dot_product(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has VNNI or AMX int8; True where it cannot tell (not Linux, not x86), so no
    warning is made up."""
    flags = _cpu_flags(cpuinfo)
    return not flags or "avx2" not in flags or bool(int8_dot_product_flags(cpuinfo))


def best_cpu_precision() -> tuple[str, str]:
    """``(precision, why)``: the fastest precision this CPU runs well on OpenVINO, among those whose
    fidelity was measured to hold (FPN cosine >= 0.99 to fp32: int8 0.9988-0.9990 with VNNI, 0.998 on
    AVX2 with 7-bit weights, bf16 0.9999; README "Engines and export"): int8 where NNCF is installed and
    the CPU has VNNI/AMX or AVX2 (there quantized for it, 7-bit weights and convolutions only: RetinaNet
    1.95x f32 on a real AVX2 CPU), else bf16 where native, else fp32."""
    import importlib.util

    found = int8_dot_product_flags()
    nncf = importlib.util.find_spec("nncf") is not None
    if nncf and found:
        return "int8", found[0]
    avx2 = "avx2" in _cpu_flags() and isa_allows("avx2")
    if nncf and avx2:
        return "int8", "AVX2 without VNNI: 7-bit weights, convolutions only"
    core = require("openvino").Core()
    if cpu_has_bf16(core):
        return "bf16", "native bf16"
    why = "no AVX2, VNNI/AMX or native bf16" if not found else f"{found[0]}, but nncf is not installed"
    if not nncf and avx2:
        why = "nncf is not installed"
    return "fp32", why


class OpenVINOEngine:
    """An OpenVINO IR (``.xml``) or ONNX file, on the CPU."""

    kind = "openvino"

    def __init__(self, path: Path, *, precision: str = "fp32", max_sizes: int = 8) -> None:
        ov = require("openvino")
        if precision not in OV_PRECISIONS:
            raise EngineError(f"the openvino engine runs {', '.join(OV_PRECISIONS)}, not {precision}")
        self._ov = ov
        self.core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16(self.core):
            log.warning("this CPU has no native bf16 (OpenVINO: %s); OpenVINO runs in f32",
                        ", ".join(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))  # fmt: skip
            precision = "fp32"
        self.path = path
        try:
            self._model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types for foreign files
            raise EngineError(f"cannot read OpenVINO model {path} ({first_line(exc)}); re-export it") from None
        inputs = self._model.inputs
        if len(inputs) != 1 or inputs[0].get_partial_shape().rank.get_length() != 3 or len(self._model.outputs) != 3:
            raise EngineError(
                f"{path} does not follow the calling convention (one (3, H, W) image in, boxes/scores/labels out); "
                "export it with `detector export`"
            )
        self._input_shape = inputs[0].get_partial_shape()
        precision = self._check_int8(precision)
        self.precision = precision
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision]}
        self._compiled: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.max_sizes = max_sizes
        self._warned_whole_graph = False
        self._lock = threading.Lock()
        """One infer request per size, shared: calls from several threads (``--detect-threads``)
        take turns (OpenVINO spreads each over the cores itself)."""

    def _check_int8(self, precision: str) -> str:
        """int8 is in the graph or not at all: asking int8 of a float graph is refused, and a quantized
        graph runs int8 whatever was asked (and says so)."""
        from .quantize import int8_node_names

        quantized = bool(int8_node_names(self._model))
        if precision == "int8" and not quantized:
            raise EngineError(
                f"{self.path} is not quantized; export it with `detector export MODEL --format openvino "
                "--precision int8` (or run it with --precision fp32)"
            )
        if quantized and precision != "int8":
            log.info("%s is an int8 model: it runs int8, not %s", self.path.name, precision)
            precision = "int8"
        if quantized and not cpu_has_int8_dot_product():
            say_int8_is_slower_here()
            if self._overflow_fix() != "enable":
                log.warning("%s was quantized for a CPU with VNNI/AMX: here its int8 sums can saturate (RetinaNet's "
                            "FPN fidelity fell from 0.999 to 0.98); re-export it on this CPU (`detector export ... "
                            "--precision int8`), which quantizes for it", self.path.name)  # fmt: skip
        return precision

    def _overflow_fix(self) -> str | None:
        """How the model was quantized for CPUs without VNNI (``quantize.OVERFLOW_FIX_KEY``); None if unsaid."""
        from .quantize import OVERFLOW_FIX_KEY

        try:
            return str(self._model.get_rt_info(OVERFLOW_FIX_KEY).astype(str))
        except (RuntimeError, KeyError, AttributeError):
            return None

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
            why = first_line(exc)
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
