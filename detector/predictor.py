"""``Detector``: frames in, :class:`~detector.structures.Detections` out.

It accepts OpenCV BGR uint8 frames (H, W, 3) -- also grayscale (H, W) and
BGRA (H, W, 4) -- or RGB tensors (3, H, W) (float 0..1 or uint8), one or a
batch. Frames move to the device as uint8 (a quarter of the bytes of float)
and are converted there. The model runs in an
engine (:mod:`detector.engines`): torch (``inference_mode``; for bf16/fp16
autocast covers only the convolution stacks, while decoding and NMS stay fp32),
OpenVINO or ONNX Runtime. Nothing global is changed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import cv2
import numpy as np
import torch
from torch import nn

from .categories import COCO_CLASS_NAMES
from .config import PRECISIONS, DetectorConfig
from .engines.base import Engine
from .engines.torch_engine import AUTOCAST_DTYPES, TorchEngine
from .errors import ConfigError
from .structures import Detections

Frame = np.ndarray | torch.Tensor | str | Path | Any
"""BGR uint8 array, RGB tensor, PIL image or image file path."""
NONE_FRAME = "the frame is None: was it read successfully? (cv2.imread returns None for a bad path)"
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}

# Raised inside torchvision/TorchScript models on every call, not the caller's to fix. Set once
# here: ``warnings.catch_warnings`` around each call is not thread-safe (``--detect-threads``)
# and could leave this filter behind, or drop one of the caller's.
warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
__all__ = ["AUTOCAST_DTYPES", "Detector", "Frame", "resolve_device"]


log = logging.getLogger(__name__)
LARGE_IMAGE_PIXELS = 50_000_000
"""A frame above this many pixels is warned about once per Detector: it is decoded and converted at
full size before the model shrinks it (a 12000x9000 JPEG peaked at 3.9-5.3 GB)."""
BYTES_PER_PIXEL = 40
"""Peak memory per input pixel, roughly: decoded BGR and RGB copies (3 + 3 bytes), then float copies
(12 bytes each) before the model's resize; measured 36 (D2Go) to 49 (torchvision) bytes."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but CUDA is not available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' asked for but MPS is not available; use --device cpu")
    return device


def cuda_index(device: torch.device | str) -> int | None:
    """The CUDA device index a run on ``device`` uses (``auto`` resolved), None when not on CUDA."""
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def torch_engine(cfg: DetectorConfig) -> bool:
    """Whether ``cfg``'s model runs on the torch engine: ``auto`` is torch unless the model is an export
    (``.onnx``/``.xml``) or int8 (OpenVINO's)."""
    if cfg.model.endswith((".onnx", ".xml")) or (cfg.engine == "auto" and cfg.precision == "int8"):
        return False
    return cfg.engine in ("auto", "torch")


def _auto_precision(cfg: DetectorConfig) -> str:
    """``precision: auto``: on OpenVINO the fastest this CPU runs well (said in one log line), else fp32."""
    if cfg.engine != "openvino":
        return "fp32"
    from .engines.openvino_engine import best_cpu_precision

    precision, why = best_cpu_precision()
    size = f"{cfg.min_size} px"
    proposals = f", {cfg.rpn_post_nms_top_n} proposals" if cfg.model.startswith("fasterrcnn") else ""
    log.info("fast: %s, %s, %s (%s)%s", cfg.model, size, precision, why, proposals)
    return precision


def _is_pil(frame: Any) -> bool:
    return type(frame).__module__.startswith("PIL.")  # without importing PIL


def _as_array(frame: Any) -> Any:
    """File paths, encoded image bytes and PIL images become BGR uint8 arrays; anything else passes through."""
    if isinstance(frame, (str, Path)):
        from .io.sources import read_image

        image = read_image(Path(frame))
        if image is None:
            raise ValueError(f"cannot read {frame} as an image; check the path and that it is an image file")
        return image
    if isinstance(frame, (bytes, bytearray, memoryview)):
        image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR) if len(frame) else None
        if image is None:
            raise ValueError(f"{len(frame)} bytes that are not an encoded image OpenCV decodes (JPEG, PNG, ...); "
                             "pass encoded image bytes, a path, a BGR uint8 array or an RGB tensor")  # fmt: skip
        return image
    if _is_pil(frame):
        return np.ascontiguousarray(np.asarray(frame.convert("RGB"))[:, :, ::-1])
    return frame


class Detector:
    """Wraps a torchvision-convention detector (``model(list_of_CHW_RGB_0_1)``) or an engine.

    ``model`` is an ``nn.Module`` returning a list of ``{"boxes", "scores",
    "labels"}`` dicts, or ``(losses, detections)`` as scripted torchvision
    models do; or any :class:`~detector.engines.Engine` (OpenVINO, ONNX
    Runtime), which follows the same convention. Score, class and count limits
    given here are applied after the model's own.
    """

    def __init__(
        self,
        model: nn.Module | Engine,
        *,
        name: str = "model",
        class_names: Sequence[str] = COCO_CLASS_NAMES,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        score_threshold: float = 0.0,
        max_detections: int | None = None,
        classes: Iterable[str | int] | None = None,
    ) -> None:
        self.name = name
        self.class_names = tuple(class_names)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "int8" and isinstance(model, nn.Module):
            raise ConfigError("precision int8 runs on the OpenVINO engine; use engine openvino (--engine openvino)")
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self.precision = precision
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.keep_labels: np.ndarray | None = None
        if classes is not None:
            try:
                ids = Detections.empty(self.class_names).label_ids(classes)
            except ValueError as exc:
                raise ConfigError(f"classes (--classes): {exc}") from None
            self.keep_labels = np.array(sorted(ids), dtype=np.int64)
        if isinstance(model, nn.Module):
            model = TorchEngine(model, device=self.device, precision=precision, channels_last=channels_last,
                                compile=compile)  # fmt: skip
        elif self.device.type != "cpu":
            raise ConfigError(
                f"the {model.kind} engine runs on the CPU; use device cpu (--device cpu) or the torch engine"
            )
        self.engine: Engine = model
        self.model: nn.Module | Engine = model.model if isinstance(model, TorchEngine) else model
        """The torch module for the torch engine (what tests and users poke at), else the engine itself."""
        self._batches = True  # cleared if the model turns out to take one image per call
        self._warned_large = False
        self._takes_uint8 = bool(getattr(self.model, "accepts_uint8", False))
        """A model (or engine) with ``accepts_uint8 = True`` is given uint8 RGB frames as they are."""

    @classmethod
    def load(
        cls,
        model: str | Path = "fasterrcnn_resnet50_fpn",
        *,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str | None = None,
        score_threshold: float | None = None,
        classes: Iterable[str | int] | str | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> Detector:
        """One step from a name to a ready detector, with the CLI's defaults (device ``auto``,
        score 0.5, torchvision's COCO weights).

        ``model`` is a registry name (``fasterrcnn_resnet50_fpn``...), ``d2go`` (shipped with the
        package), a preset name (``retinanet_r50_fpn_v2``), a YAML config file or a TorchScript
        file. Keyword arguments override the config: ``weights`` (a ``.pth`` or ``"random"``),
        ``classes`` (``["person", "car"]`` or ``"person,car"``) and any other config key
        (``min_size=480``...).
        """
        from .config import load_config
        from .models.registry import MODELS
        from .resources import preset_path

        values = {"weights": None if weights is None else str(weights), "device": device, "precision": precision,
                  "score_threshold": score_threshold, "classes": classes, **overrides}  # fmt: skip
        text = str(model)
        if text.endswith((".yaml", ".yml")) or (text not in MODELS and preset_path(text) is not None):
            return cls.from_config(load_config(text, values), progress=progress)
        return cls.from_config(load_config(None, {"model": text, **values}), progress=progress)

    @classmethod
    def from_config(cls, cfg: DetectorConfig, *, progress: bool = True) -> Detector:
        """Build the model ``cfg`` names, with its weights resolved and loaded."""
        from .models.build import build_model

        if cfg.precision == "auto":
            cfg = cfg.replace(precision=_auto_precision(cfg))
        if cfg.precision == "int8" and cfg.engine == "auto" and not cfg.model.endswith(".onnx"):
            cfg = cfg.replace(engine="openvino")  # int8 is OpenVINO's
        if not torch_engine(cfg):
            from .engines.load import engine_from_config

            if cfg.compile:
                raise ConfigError(
                    "compile (--compile) applies to the torch engine; drop it for OpenVINO/ONNX Runtime models"
                )
            engine, class_names, post = engine_from_config(cfg, progress=progress)
            device = "cpu" if cfg.device == "auto" else cfg.device
            return cls(engine, name=post.name, class_names=class_names, device=device, precision=engine.precision,
                       score_threshold=post.score_threshold, max_detections=post.max_detections,
                       classes=cfg.classes)  # fmt: skip
        model, class_names, post = build_model(cfg, progress=progress)
        return cls(
            model,
            name=post.name,
            class_names=class_names,
            device=cfg.device,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
            compile=cfg.compile,
            score_threshold=post.score_threshold,
            max_detections=post.max_detections,
            classes=cfg.classes,
        )

    @property
    def resize_limits(self) -> tuple[int, int] | None:
        """``(min_size, max_size)`` the model resizes frames to (torchvision's transform), or None where
        the model does not say (exported graphs, other TorchScript models)."""
        transform = getattr(self.model, "transform", None)
        min_size, max_size = getattr(transform, "min_size", None), getattr(transform, "max_size", None)
        if isinstance(min_size, (tuple, list)) and min_size:
            min_size = min_size[-1]
        if isinstance(min_size, int) and isinstance(max_size, int):
            return min_size, max_size
        return None

    # -- stages ---------------------------------------------------------------

    def _to_tensor(self, frame: Frame) -> torch.Tensor:
        """One frame as an RGB (3, H, W) tensor on the device: uint8 for image arrays (converted
        to float later, by :meth:`forward` or by a model that takes uint8), float passed through."""
        if frame is None:
            raise TypeError(NONE_FRAME)
        frame = _as_array(frame)
        if isinstance(frame, (np.ndarray, torch.Tensor)) and 0 in tuple(frame.shape):
            raise ValueError(f"the frame is empty (shape {tuple(frame.shape)}); pass an image with pixels")
        if isinstance(frame, (np.ndarray, torch.Tensor)) and frame.ndim >= 2 and not self._warned_large:
            h, w = frame.shape[-2:] if isinstance(frame, torch.Tensor) else frame.shape[:2]
            self._warn_if_large(int(h), int(w))
        if isinstance(frame, torch.Tensor):
            if frame.ndim != 3 or frame.shape[0] != 3:
                raise ValueError(f"tensor frames must be RGB (3, H, W), got shape {tuple(frame.shape)}")
            if frame.is_floating_point() and float(frame.max()) > 1.0 + 1e-3:  # 0..255 read as 0..1: nonsense boxes
                raise ValueError(f"float tensor frames are RGB in 0..1, got values up to {float(frame.max()):.1f}; "
                                 "divide by 255 or pass a uint8 tensor")  # fmt: skip
            return frame.to(self.device, non_blocking=True)
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"frames must be numpy arrays or tensors, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"numpy frames must be uint8 BGR, got dtype {frame.dtype}")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
            raise ValueError(f"numpy frames must be (H, W, 3) BGR, got shape {frame.shape}")
        if not frame.flags.c_contiguous:
            frame = np.ascontiguousarray(frame)
        code = _TO_RGB[1 if frame.ndim == 2 else frame.shape[2]]
        if self.device.type == "cuda":  # straight into pinned memory, copied without blocking this thread
            host = torch.empty((*frame.shape[:2], 3), dtype=torch.uint8, pin_memory=True)
            rgb = cv2.cvtColor(frame, code, dst=host.numpy())
            if rgb.ctypes.data != host.data_ptr():  # OpenCV allocated elsewhere after all
                host.numpy()[...] = rgb
            t = host.to(self.device, non_blocking=True)
        else:
            t = torch.from_numpy(cv2.cvtColor(frame, code)).to(self.device)
        return t.permute(2, 0, 1)  # a view: (3, H, W) over the interleaved pixels

    def _warn_if_large(self, h: int, w: int) -> None:
        """One warning per Detector for a frame above :data:`LARGE_IMAGE_PIXELS`; no refusal."""
        if h * w <= LARGE_IMAGE_PIXELS:
            return
        self._warned_large = True
        limits = self.resize_limits
        to = f" (at most {limits[1]} px a side)" if limits else ""
        log.warning(
            "a %dx%d image (%.0f megapixels) is resized to the model's input%s, but decoding and converting it "
            "at full size takes about %.1f GB of memory; downscale such images first if memory is short",
            w, h, h * w / 1e6, to, h * w * BYTES_PER_PIXEL / 1e9,
        )  # fmt: skip

    def preprocess(self, frames: Sequence[Frame]) -> list[torch.Tensor]:
        """Frames to RGB (3, H, W) tensors on the model's device.

        Image arrays move as uint8 (a quarter of the bytes of float; on CUDA from pinned
        memory, without blocking) and stay uint8 here: :meth:`forward` converts them to
        float 0..1 on the device, unless the model takes uint8 itself (``accepts_uint8``).
        """
        return [self._to_tensor(f) for f in frames]

    def _model_input(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype != torch.uint8:
            return t if t.dtype == torch.float32 else t.float()
        if self._takes_uint8:
            return t
        if t.device.type == "cpu":
            # numpy, one thread, the same IEEE division, into a contiguous (3, H, W) array as models
            # expect: torch's two-thread pool costs far more than it saves on one frame when decoding
            # and encoding threads want the cores (benchmarks/pipeline_fps.py, the float-input row)
            return torch.from_numpy(np.divide(t.numpy(), np.float32(255.0), dtype=np.float32, order="C"))
        return t.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)

    def forward(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The model on preprocessed tensors; returns its raw per-image dicts.

        Some exported models handle one image per call (the D2Go TorchScript
        model returns one result for a list of two): when a batch comes back
        short, this runs the images one by one, and does so from then on.
        """
        tensors = [self._model_input(t) for t in tensors]
        if len(tensors) > 1 and not self._batches:
            return [self.engine([t])[0] for t in tensors]
        out = self.engine(tensors)
        if len(out) != len(tensors):
            if len(tensors) == 1:
                raise RuntimeError(f"{self.name} returned {len(out)} results for one image")
            self._batches = False
            return [self.engine([t])[0] for t in tensors]
        return out

    def postprocess(self, outputs: list[dict[str, torch.Tensor]]) -> list[Detections]:
        """Raw dicts to ``Detections`` with this detector's score, class and count limits.

        On CUDA every result of the batch is copied back without blocking, then the stream is
        waited for once: one synchronisation per batch, not three per image.
        """
        first = outputs[0]["boxes"] if outputs else None
        if isinstance(first, torch.Tensor) and first.device.type == "cuda":
            keys = ("boxes", "scores", "labels")
            outputs = [{k: out[k].detach().to("cpu", non_blocking=True) for k in keys} for out in outputs]
            torch.cuda.current_stream(first.device).synchronize()
        results = []
        for out in outputs:
            dets = Detections(
                out["boxes"].detach().float().cpu().numpy(),
                out["scores"].detach().float().cpu().numpy(),
                out["labels"].detach().cpu().numpy(),
                self.class_names,
            )
            classes = None if self.keep_labels is None else self.keep_labels.tolist()
            dets = dets.filter(min_score=self.score_threshold, classes=classes)
            if self.max_detections is not None and len(dets) > self.max_detections:
                dets = dets[np.argsort(-dets.scores, kind="stable")[: self.max_detections]]
            results.append(dets)
        return results

    # -- one call -------------------------------------------------------------

    @overload
    def __call__(self, frames: Frame) -> Detections: ...
    @overload
    def __call__(self, frames: Sequence[Frame]) -> list[Detections]: ...

    def __call__(self, frames: Frame | Sequence[Frame]) -> Detections | list[Detections]:
        """Detect in one frame (returns ``Detections``) or a batch (returns a list).

        A 4-D numpy array (B, H, W, 3) or tensor (B, 3, H, W) is a batch.
        """
        if frames is None:
            raise TypeError(NONE_FRAME)
        single = (
            (isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim in (2, 3))
            or isinstance(frames, (str, Path, bytes, bytearray, memoryview))
            or _is_pil(frames)
        )
        batch: Sequence[Frame] = [frames] if single else list(frames)  # type: ignore[list-item,arg-type]
        results = self.postprocess(self.forward(self.preprocess(batch))) if batch else []
        return results[0] if single else results

    def __repr__(self) -> str:
        return (
            f"Detector(name={self.name!r}, engine={self.engine.kind}, device={self.device}, precision={self.precision})"
        )


load = Detector.load
"""``detector.load(name_or_path, ...)``: see :meth:`Detector.load`."""
