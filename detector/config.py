"""Typed, validated detector configuration.

A config is a frozen dataclass. YAML files and command-line overrides go
through :func:`load_config`, which rejects unknown keys and bad values with a
one-line :class:`~detector.errors.ConfigError`. The dataclass defaults are
torchvision's own defaults for the four ResNet-50-FPN models, except the
score threshold (0.5, a sensible display threshold; evaluation lowers it).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEVICES_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
"""int8 is OpenVINO's (NNCF post-training quantization); fp16 is CUDA's."""
CONFIG_PRECISIONS = (*PRECISIONS, "auto")
"""``auto``: the fastest this CPU runs well on OpenVINO (int8 with VNNI/AMX or AVX2, else bf16 where native,
else fp32), chosen when the model loads; fp32 on the torch engine."""
ENGINES = ("auto", "torch", "openvino", "onnxruntime")
EXPORT_PRECISIONS = ("fp32", "bf16", "int8")
"""What an exported model can run at (fp16 is CUDA's, and exports run on the CPU; int8 is quantized
into the file, OpenVINO format only)."""
EXPORT_FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
"""``detector export --format`` -> the model file's extension."""
CODECS = ("auto", "h264", "mp4v")
"""Video codecs for ``.mp4``-like outputs (``.avi`` is always MJPG)."""
SERVE_TOKEN_ENV = "DETECTOR_SERVE_TOKEN"
"""The live view's access token when none is given."""


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to build a :class:`~detector.Detector`."""

    model: str = "fasterrcnn_resnet50_fpn"
    """Registry name (see ``detector.models.MODELS``) or a TorchScript file path."""
    weights: str | None = None
    """``None``: torchvision's COCO weights (found or downloaded); a ``.pth`` path; or ``random``."""
    num_classes: int | None = None
    """Classes of a custom ``.pth`` (background included); inferred from the file when unset."""
    class_names: tuple[str, ...] | None = None
    """Names indexed by label id; COCO's 91-slot names when unset."""
    min_size: int = 800
    max_size: int = 1333
    score_threshold: float = 0.5
    nms_threshold: float = 0.5
    max_detections: int = 100
    rpn_pre_nms_top_n: int = 1000
    """Faster R-CNN only: proposals kept per level before NMS (test time)."""
    rpn_post_nms_top_n: int = 1000
    """Faster R-CNN only: proposals kept after NMS (test time)."""
    device: str = "auto"
    precision: str = "fp32"
    engine: str = "auto"
    """``auto``: torch for registry names and TorchScript files, the file's own for ``.xml`` (OpenVINO) and
    ``.onnx`` (ONNX Runtime); ``torch``, ``openvino`` or ``onnxruntime`` to choose (registry models are exported
    on first use into a cache)."""
    channels_last: bool = False
    compile: bool = False
    """Torch engine: ``torch.compile`` the backbone + FPN (the first frames pay the compile time;
    every new input size compiles again). Off by default until measured to pay (``benchmarks/gpu.py``)."""
    classes: tuple[str, ...] | None = None
    """Keep only these classes (names or label ids); all when unset."""
    calibration: str | None = None
    """int8: the video or image folder whose frames calibrate the quantization (default: the shipped
    demo clip; ``detector eval``: the dataset's own images). Part of the export cache key."""

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> DetectorConfig:
        """A copy with ``changes`` applied, coerced and validated like a loaded config."""
        _check_keys(changes, "replace()")
        return dataclasses.replace(self, **{k: _coerce(k, v) for k, v in changes.items()})


FIELDS = {f.name: f for f in dataclasses.fields(DetectorConfig)}


def _validate(cfg: DetectorConfig) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key '{key}' {why}")

    for key in ("min_size", "max_size", "max_detections", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, f"must be a positive integer, got {value!r}")
    if cfg.min_size > cfg.max_size:
        raise bad("min_size", f"({cfg.min_size}) must not exceed max_size ({cfg.max_size})")
    for key in ("score_threshold", "nms_threshold"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise bad(key, f"must be a number in [0, 1], got {value!r}")
    if cfg.num_classes is not None and (
        isinstance(cfg.num_classes, bool) or not isinstance(cfg.num_classes, int) or cfg.num_classes < 1
    ):
        raise bad("num_classes", f"must be a positive integer, got {cfg.num_classes!r}")
    if not isinstance(cfg.model, str) or not cfg.model:
        raise bad("model", "must be a registry name or a TorchScript file path")
    if cfg.weights is not None and (not isinstance(cfg.weights, str) or not cfg.weights):
        raise bad("weights", "must be a file path, 'random', or empty for the official weights")
    if not isinstance(cfg.device, str) or not DEVICES_RE.match(cfg.device):
        raise bad("device", f"must be auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    if cfg.precision not in CONFIG_PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(CONFIG_PRECISIONS)}, got {cfg.precision!r}")
    if cfg.engine not in ENGINES:
        raise bad("engine", f"must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    for key in ("channels_last", "compile"):
        if not isinstance(getattr(cfg, key), bool):
            raise bad(key, f"must be true or false, got {getattr(cfg, key)!r}")
    if cfg.precision == "int8" and cfg.engine not in ("auto", "openvino"):
        raise bad("precision", f"int8 runs on the OpenVINO engine, not {cfg.engine}; use --engine openvino")
    if cfg.calibration is not None and (not isinstance(cfg.calibration, str) or not cfg.calibration):
        raise bad("calibration", "must be a video file or an image folder")
    if cfg.compile and cfg.engine in ("openvino", "onnxruntime"):
        raise bad("compile", f"applies to the torch engine, not {cfg.engine}; drop --compile or use --engine torch")
    for key in ("class_names", "classes"):
        value = getattr(cfg, key)
        if value is not None and (
            not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value)
        ):
            raise bad(key, "must be a non-empty list of names")
    if cfg.class_names is not None and cfg.num_classes is not None and len(cfg.class_names) != cfg.num_classes:
        raise bad(
            "class_names",
            f"has {len(cfg.class_names)} names but num_classes is {cfg.num_classes}; "
            "give one name per class, background included",
        )


def _coerce(key: str, value: Any) -> Any:
    """Turn YAML/CLI values into the field's type (lists to tuples, 'a,b' to tuples)."""
    if key in ("class_names", "classes") and value is not None:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
    if key == "weights" and value is not None and not isinstance(value, str):
        return str(value)
    if key in ("score_threshold", "nms_threshold") and type(value) is int:
        return float(value)
    return value


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file, or the name of a shipped preset (``faster_rcnn_r50_fpn``, ``speed_cpu_bf16``...)."""
    from .resources import preset_names, preset_path

    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    preset = preset_path(str(path))
    if preset is not None:
        return preset
    if candidate.is_dir():
        raise ConfigError(f"config {path} is a folder; pass a YAML file or a preset name")
    presets = ", ".join(preset_names())
    text = str(path)
    if "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        raise ConfigError(f"config file {path} not found; pass an existing YAML file or a preset ({presets})")
    raise ConfigError(f"unknown preset '{path}'; use a YAML file or one of {presets}")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _check_keys(values: Mapping[str, Any], source: str) -> None:
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(FIELDS)}"
            raise ConfigError(f"unknown config key '{key}' in {source}; {hint}")


_KEY_RE = re.compile(r"^config key '(\w+)'")


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    override_names: Mapping[str, str] | None = None,
) -> DetectorConfig:
    """Read ``path`` (a YAML file or a preset name; optional), apply ``overrides`` (``None``
    values are skipped), validate.

    An error names the file it is in, or the override; ``override_names`` maps keys
    to what the user typed (e.g. ``{"score_threshold": "--score"}``) for messages.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        values.update(_read_yaml(path))
        _check_keys(values, str(path))
        try:
            DetectorConfig(**{k: _coerce(k, v) for k, v in values.items()})
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {path})") from None
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(given, "overrides")
    values.update(given)
    try:
        return DetectorConfig(**{k: _coerce(k, v) for k, v in values.items()})
    except ConfigError as exc:
        match = _KEY_RE.match(str(exc))
        key = match.group(1) if match else None
        if key is not None and override_names and key in override_names and key in given:
            raise ConfigError(_KEY_RE.sub(override_names[key], str(exc), count=1)) from None
        raise ConfigError(f"{exc} (in {'overrides' if path is None else f'{path} with overrides'})") from None
