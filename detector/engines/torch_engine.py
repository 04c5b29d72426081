"""The torch engine: an ``nn.Module`` on a device, with honest mixed precision.

Autocast around a whole torchvision detector also runs box decoding, clipping,
score activation and NMS in bf16/fp16: boxes then land on a grid (bf16 keeps 8
significant bits, so every coordinate above 512 px is a multiple of 4) and
many detections share a score. Here only the convolution stacks run in low
precision -- backbone + FPN, the RPN / RetinaNet head towers, the box head --
and their outputs are cast back to fp32, so the final class/box predictors,
decoding, clipping, scores and NMS stay in fp32.

On CUDA the four torchvision ResNet-50-FPN detectors (Faster R-CNN and RetinaNet, v1 and v2) run by
default through the batched, sync-free path of :mod:`detector.models.batched` (the same modules and
weights, torchvision's results, one host copy per batch); elsewhere, and for any other model,
through the model's own forward. ``$DETECTOR_BATCHED`` (``auto``, ``on``, ``off``) or the engine's
``batched`` argument forces it either way. ``$DETECTOR_CUDA_GRAPHS=on`` (or ``cuda_graphs=True``) runs that
path's device part as captured CUDA graphs (:meth:`detector.models.batched.BatchedDetector.use_graphs`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError, EngineError
from .base import LOW_PRECISION_MODULES, first_line

if TYPE_CHECKING:
    from ..models.batched import BatchedDetector

log = logging.getLogger(__name__)

BATCHED_ENV = "DETECTOR_BATCHED"
"""``auto`` (the default: the batched path on CUDA for the models it covers), ``on`` (wherever it covers
the model, the CPU included) or ``off`` (the model's own forward)."""
BATCHED_MODES = ("auto", "on", "off")

GRAPHS_ENV = "DETECTOR_CUDA_GRAPHS"
"""``on`` runs the batched path's device part as CUDA graphs; ``off`` (the default) does not."""


def _mode(given: str, modes: tuple[str, ...], default: str, source: str) -> str:
    """``given`` as one of ``modes`` (case and spaces aside; empty is ``default``), or a one-line error
    naming ``source``."""
    mode = given.strip().lower() or default
    if mode not in modes:
        raise ConfigError(f"{source} must be {', '.join(modes[:-1])} or {modes[-1]}, got {given!r}")
    return mode


def graphs_wanted(value: bool | None = None) -> bool:
    """``value``, else ``$DETECTOR_CUDA_GRAPHS`` (``on``/``off``, default off)."""
    if value is not None:
        return value
    return _mode(os.environ.get(GRAPHS_ENV, ""), ("on", "off"), "off", GRAPHS_ENV) == "on"


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _to_fp32(value: Any) -> Any:
    """Cast every floating tensor inside tensors, lists, tuples and dicts back to fp32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _to_fp32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    return value


def _autocast_forward(forward: Callable[..., Any], device_type: str, dtype: torch.dtype, *args: Any, **kw: Any) -> Any:
    with torch.autocast(device_type=device_type, dtype=dtype):
        out = forward(*args, **kw)
    return _to_fp32(out)


def low_precision_parts(model: nn.Module) -> list[nn.Module]:
    """The modules of ``LOW_PRECISION_MODULES`` that ``model`` has (torchvision Faster R-CNN / RetinaNet).

    Empty for other models (e.g. TorchScript files), which then run in fp32 under this engine's rule.
    """
    parts = []
    for path in LOW_PRECISION_MODULES:
        part: Any = model
        for name in path.split("."):
            part = getattr(part, name, None)
        if isinstance(part, nn.Module) and not isinstance(part, torch.jit.ScriptModule):
            parts.append(part)
    return parts


def apply_mixed_precision(model: nn.Module, precision: str, device_type: str) -> list[nn.Module]:
    """Run ``low_precision_parts(model)`` under autocast, in place; returns the parts changed.

    The parts' ``forward`` is replaced on the instance (module tree and state_dict keys unchanged).
    """
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return []
    parts = low_precision_parts(model)
    for part in parts:
        if isinstance(part.forward, functools.partial):  # already done (e.g. a second Detector on this model)
            continue
        part.forward = functools.partial(_autocast_forward, part.forward, device_type, dtype)  # type: ignore[method-assign]
    return parts


def compile_parts(model: nn.Module) -> list[nn.Module]:
    """``torch.compile`` a torchvision detector's backbone (+ FPN) in place (``Module.compile``: the
    module tree and state_dict keys stay as they are); the whole model when it has no backbone.
    Compiling happens on the first call; box decoding, NMS and the heads' Python stay eager."""
    if isinstance(model, torch.jit.ScriptModule):
        raise EngineError("compile (--compile) needs an eager torch model; a TorchScript file cannot be compiled")
    part = getattr(model, "backbone", None)
    part = part if isinstance(part, nn.Module) else model
    part.compile(dynamic=None)
    return [part]


def batched_mode(value: str | None = None) -> str:
    """``value``, else ``$DETECTOR_BATCHED``, else ``auto``; checked against :data:`BATCHED_MODES`."""
    if value is None:
        return _mode(os.environ.get(BATCHED_ENV, ""), BATCHED_MODES, "auto", BATCHED_ENV)
    return _mode(value, BATCHED_MODES, "auto", "batched")


class TorchEngine:
    """A torchvision-convention module (``model(list_of_CHW_RGB_0_1)``) under ``inference_mode``."""

    kind = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        batched: str | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.device = device
        self.precision = precision
        self._whole_model_autocast = False
        if precision in AUTOCAST_DTYPES and not apply_mixed_precision(model, precision, device.type):
            # A model whose parts we cannot see (TorchScript): the old whole-model autocast is all there is.
            log.warning("%s: no backbone/head found; autocast covers the whole model", type(model).__name__)
            self._whole_model_autocast = True
        self.compiled = compile_parts(model) if compile else []
        self.warmup_seconds: float | None = None
        """With ``compile``: how long the first call took (compiling included)."""
        self.batched: BatchedDetector | None = None
        self._covered: tuple[BatchedDetector | None] | None = None
        """The batched, sync-free path in use (see :meth:`use_batched`), or None: the model's own forward."""
        self.cuda_graphs = graphs_wanted(cuda_graphs)
        """Run the batched path's device part as CUDA graphs (``$DETECTOR_CUDA_GRAPHS``)."""
        self.use_batched(batched)

    def use_batched(self, mode: str | None = None) -> bool:
        """Choose the path: ``auto`` (the default; ``None`` reads ``$DETECTOR_BATCHED``) takes the batched
        path on CUDA where it covers the model, ``on`` wherever it covers it, ``off`` never. Returns
        whether it is now in use. Both paths give torchvision's results; the batched one makes a CUDA
        device wait far less (see :mod:`detector.models.batched`)."""
        from ..models.batched import batched_path

        mode = batched_mode(mode)
        wrapper = None
        if mode == "on" or (mode == "auto" and self.device.type == "cuda"):
            if self._covered is None:  # built once: it keeps its device constants, anchors and counts
                self._covered = (None if self._whole_model_autocast else batched_path(self.model),)
            wrapper = self._covered[0]
            if wrapper is None and mode == "on":
                log.warning("%s: no batched path covers this model; it runs its own forward", type(self.model).__name__)
        if wrapper is not None and wrapper.graphs != self.cuda_graphs:
            wrapper.use_graphs(self.cuda_graphs)
        if self.cuda_graphs and wrapper is None:
            log.warning("CUDA graphs (%s) apply to the batched path, not in use here (%s, %s): running without them",
                        GRAPHS_ENV, type(self.model).__name__, self.device)  # fmt: skip
        elif self.cuda_graphs and self.device.type != "cuda":
            log.info("CUDA graphs: on %s the captured device part runs without them", self.device)
        self.batched = wrapper
        log.debug("torch engine: %s path", "batched" if wrapper is not None else "the model's own")
        return wrapper is not None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self._whole_model_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        start = time.perf_counter()
        try:
            with torch.inference_mode(), self._autocast():
                out = (self.batched or self.model)(images)
        except Exception as exc:
            if self.compiled and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise EngineError(f"torch.compile failed ({first_line(exc)}); run without compile (--compile)") from exc
            raise
        if self.compiled and self.warmup_seconds is None:
            self.warmup_seconds = time.perf_counter() - start
            log.info("torch.compile: the first call took %.1f s (compiling %s)", self.warmup_seconds,
                     " and ".join(type(m).__name__ for m in self.compiled))  # fmt: skip
        if isinstance(out, tuple):  # scripted torchvision models return (losses, detections)
            out = out[1]
        return list(out)
