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
        raise ConfigError(f"cannot load TorchScript model {path} ({clip(first)}); re-export it") from None


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
    detail = state_dict_mismatch(model.state_dict(), state_dict)
    if detail is None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:  # anything torch finds that the comparison above did not
            detail = clip(" ".join(str(exc).split()))
    if detail is not None:
        raise WeightsError(
            f"weights file {path} does not fit {spec.name} ({detail}); pass the --model it was saved from"
        ) from None
    return model, num_classes


def clip(text: str, limit: int = 160) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "..." when cut: never mid-word."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return f"{cut}..."


def state_dict_mismatch(wanted: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """Why ``given`` (a weights file's state_dict) does not load into a model whose state_dict is
    ``wanted``, in one short line (``3 missing keys, 2 unexpected; first missing: backbone.fc.weight``),
    or None when every key and shape fits. torch's own text lists every key, paragraphs long."""
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    shapes = [k for k in wanted if k in given and given[k].shape != wanted[k].shape]
    if not (missing or unexpected or shapes):
        return None
    counts = [f"{len(missing)} missing key{'' if len(missing) == 1 else 's'}"] if missing else []
    counts += [f"{len(unexpected)} unexpected"] if unexpected else []
    counts += [f"{len(shapes)} of another shape"] if shapes else []
    if missing:
        first = f"first missing: {missing[0]}"
    elif unexpected:
        first = f"first unexpected: {unexpected[0]}"
    else:
        key = shapes[0]
        first = f"first: {key} is {_shape(given[key])} in the file, {_shape(wanted[key])} in the model"
    return clip(f"{', '.join(counts)}; {first}", 200)


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


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "a scalar"
