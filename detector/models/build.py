"""From a :class:`~detector.config.DetectorConfig` to a ready ``nn.Module``."""

from __future__ import annotations

import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision  # noqa: F401  (registers torchvision::nms & co. for TorchScript files)
from torch import nn

from ..categories import COCO_CLASS_NAMES
from ..config import DetectorConfig
from ..errors import ConfigError, WeightsError
from ..resources import SHIPPED_MODELS
from . import weights as W
from .registry import MODELS, ModelSpec, get_spec

log = logging.getLogger(__name__)
RANDOM_SEED = 0
"""``weights="random"`` draws its tensors from this seed: two builds of a model are identical (one cache entry)."""
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".jit", ".torchscript", ".pth")


@dataclass(frozen=True)
class PostLimits:
    """What ``Detector`` must still enforce after the model (TorchScript models bake theirs in)."""

    name: str
    score_threshold: float
    max_detections: int | None


def looks_like_path(model: str) -> bool:
    return model not in MODELS and ("/" in model or "\\" in model or model.endswith(TORCHSCRIPT_SUFFIXES))


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; ``torch.save`` files do not."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def uses_quantized_ops(path: Path) -> bool:
    """Whether a TorchScript archive's code calls ``quantized::`` ops (an int8 model)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(
                b"quantized." in zf.read(n) or b"quantized::" in zf.read(n)
                for n in zf.namelist()
                if "/code/" in n and n.endswith(".py")
            )
    except (zipfile.BadZipFile, OSError):
        return False


def load_torchscript(path: Path, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a scripted detector.

    An int8 model (one calling ``quantized::`` ops, like the D2Go export) needs the
    quantized engine it was exported for, qnnpack; torch keeps that choice
    process-wide (``torch.backends.quantized.engine``), so it is switched -- and logged
    at debug level -- only when such a model is loaded and the engine is not qnnpack yet.
    """
    if (
        uses_quantized_ops(path)
        and "qnnpack" in torch.backends.quantized.supported_engines
        and torch.backends.quantized.engine != "qnnpack"
    ):
        log.debug("int8 model %s: switching torch's quantized engine to qnnpack (process-wide)", path.name)
        torch.backends.quantized.engine = "qnnpack"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch.jit raises RuntimeError and others for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load TorchScript model {path} ({first[:160]}); re-export it") from None


def _class_names(cfg: DetectorConfig, num_classes: int) -> tuple[str, ...]:
    if cfg.class_names is not None:
        return cfg.class_names
    if num_classes == len(COCO_CLASS_NAMES):
        return COCO_CLASS_NAMES
    return tuple(f"class_{i}" for i in range(num_classes))


def _build_random(spec: ModelSpec, cfg: DetectorConfig, num_classes: int) -> nn.Module:
    """Untrained weights drawn from :data:`RANDOM_SEED`, leaving the caller's RNG state as it was.

    Every process and every call gets the same tensors, so ``--weights random`` runs share one
    export cache entry, engines can be compared on them, and torchrun's processes agree. Modules
    are built on the CPU, so only the CPU generator is forked and seeded.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(RANDOM_SEED)
        return spec.build(cfg, num_classes)


def _build_registry(spec: ModelSpec, cfg: DetectorConfig, progress: bool) -> tuple[nn.Module, int]:
    wanted = cfg.num_classes or (len(cfg.class_names) if cfg.class_names else None)
    if cfg.weights == "random":
        num_classes = wanted or len(COCO_CLASS_NAMES)
        return _build_random(spec, cfg, num_classes), num_classes
    path = W.resolve(spec, cfg.weights, progress=progress)
    state_dict = W.load_state_dict(path)
    in_file = spec.num_classes_in(state_dict)
    num_classes = wanted or in_file or len(COCO_CLASS_NAMES)
    if in_file is not None and in_file != num_classes:
        raise WeightsError(
            f"weights file {path} has {in_file} classes but the config asks for {num_classes}; "
            f"set num_classes to {in_file} and give {in_file} class_names (background included)"
        )
    model = spec.build(cfg, num_classes)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(
            f"weights file {path} does not fit {spec.name} ({detail}); pass the --model it was saved from"
        ) from None
    return model, num_classes


def build_model(cfg: DetectorConfig, *, progress: bool = True) -> tuple[nn.Module, tuple[str, ...], PostLimits]:
    """The model, its label-to-name table and the limits left for ``Detector`` to apply."""
    if cfg.model in MODELS:
        spec = get_spec(cfg.model)
        model, num_classes = _build_registry(spec, cfg, progress)
        # torchvision applies score, NMS and count limits itself; class filtering is left.
        return model, _class_names(cfg, num_classes), PostLimits(spec.name, cfg.score_threshold, None)
    shipped = SHIPPED_MODELS.get(cfg.model)
    if shipped is None and not looks_like_path(cfg.model):
        get_spec(cfg.model)  # raises the unknown-model error with the list of names
    path = shipped or Path(cfg.model).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model file {path} not found; pass a registry name ({', '.join(MODELS)}) or an existing TorchScript file"
        )
    if not is_torchscript(path):
        raise ConfigError(
            f"{path} is not a TorchScript file; for a state_dict (.pth) pass --model <registry name> --weights {path}"
        )
    if cfg.weights is not None:
        raise ConfigError(f"TorchScript file {path} carries its own weights; drop --weights")
    model = load_torchscript(path)
    names = cfg.class_names or COCO_CLASS_NAMES
    return model, names, PostLimits(cfg.model if shipped else path.stem, cfg.score_threshold, cfg.max_detections)
