"""From a config to a ready engine: an exported file, or a registry model exported on first use.

``--model FILE.xml`` runs on OpenVINO and ``--model FILE.onnx`` on ONNX Runtime
(or OpenVINO with ``--engine openvino``). A registry model with ``--engine
openvino|onnxruntime`` is exported once into the cache folder and reused; the
cache entry is keyed by the model, the sha256 of its weights and everything
baked into the graph (sizes, thresholds, classes) plus the precision, so a
change to any of them makes a new entry instead of reusing a stale one.

Cache folder: ``$DETECTOR_CACHE`` if set, else ``$XDG_CACHE_HOME/detector``
(``~/.cache/detector``), under ``exports/``; its size limit, eviction and safety between
processes are in :mod:`detector.engines.cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..config import DetectorConfig
from ..errors import ConfigError, EngineError
from ..models.build import PostLimits
from .base import Engine
from .cache import cache_dir as cache_dir
from .cache import evict, exports_dir, max_mb, publish, staging, touch
from .export import GRAPH_VERSION, calibration_for, export_model, weights_sha256
from .sidecar import Sidecar, read_sidecar

log = logging.getLogger(__name__)

FILE_ENGINES = {".xml": "openvino", ".onnx": "onnxruntime"}
FORMAT_OF_ENGINE = {"openvino": "openvino", "onnxruntime": "onnx"}
_DEFAULTS = DetectorConfig()


def cache_key(cfg: DetectorConfig, weights_sha: str, fmt: str, calibration: str | None = None) -> str:
    """Everything that changes the exported graph, plus the precision it is for (and, for int8, the
    key of the calibration frames)."""
    baked = {
        "model": cfg.model,
        "graph": GRAPH_VERSION,
        "weights_sha256": weights_sha,
        "format": fmt,
        "precision": cfg.precision,
        "num_classes": cfg.num_classes,
        "class_names": cfg.class_names,
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "score_threshold": cfg.score_threshold,
        "nms_threshold": cfg.nms_threshold,
        "max_detections": cfg.max_detections,
        "rpn_pre_nms_top_n": cfg.rpn_pre_nms_top_n,
        "rpn_post_nms_top_n": cfg.rpn_post_nms_top_n,
    }
    if calibration is not None:
        baked["calibration"] = calibration
    return hashlib.sha256(json.dumps(baked, sort_keys=True).encode()).hexdigest()[:20]


def open_engine(path: Path, engine: str, precision: str) -> Engine:
    if engine == "openvino":
        from .openvino_engine import OpenVINOEngine

        return OpenVINOEngine(path, precision=precision)
    if engine == "onnxruntime":
        if path.suffix != ".onnx":
            raise ConfigError(f"the onnxruntime engine runs .onnx files, not {path.name}; use --engine openvino")
        from .onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, precision=precision)
    raise ConfigError(f"{path.name} is an exported model; use --engine openvino or onnxruntime (or auto), not {engine}")


def _check_sizes(cfg: DetectorConfig, sidecar: Sidecar, path: Path) -> None:
    """An explicit min/max size that differs from the one baked into the file is a mistake, not a wish."""
    for key in ("min_size", "max_size"):
        asked, baked = getattr(cfg, key), getattr(sidecar, key)
        if asked != getattr(_DEFAULTS, key) and asked != baked:
            raise EngineError(
                f"{path.name} was exported for {key} {baked}, not {asked}; drop --{key.replace('_', '-')} "
                f"or re-export with `detector export {sidecar.model} --{key.replace('_', '-')} {asked}`"
            )


def _class_names(cfg: DetectorConfig, sidecar: Sidecar, path: Path) -> tuple[str, ...]:
    if cfg.class_names is None:
        return sidecar.class_names
    if len(cfg.class_names) != len(sidecar.class_names):
        raise EngineError(
            f"{path.name} has {len(sidecar.class_names)} classes but the config gives {len(cfg.class_names)} "
            "class_names; drop class_names (the sidecar carries them) or give one per class"
        )
    return cfg.class_names


def load_exported(cfg: DetectorConfig, path: Path) -> tuple[Engine, tuple[str, ...], PostLimits]:
    """An exported file as an engine; the config's score/count limits are applied after the baked-in ones."""
    if not path.is_file():
        raise ConfigError(f"model file {path} not found; export one with `detector export` or pass a registry name")
    engine = FILE_ENGINES[path.suffix] if cfg.engine == "auto" else cfg.engine
    if cfg.weights is not None:
        raise ConfigError(f"exported model {path} carries its own weights; drop --weights")
    sidecar = read_sidecar(path)
    _check_sizes(cfg, sidecar, path)
    names = _class_names(cfg, sidecar, path)
    if cfg.score_threshold < sidecar.score_threshold:
        log.warning("%s keeps scores >= %s only (baked in at export); a lower --score has no effect",
                    path.name, sidecar.score_threshold)  # fmt: skip
    limits = PostLimits(path.stem, cfg.score_threshold, cfg.max_detections)
    return open_engine(path, engine, cfg.precision), names, limits


def _valid_sidecar(path: Path, *, quiet: bool = False) -> Sidecar | None:
    """The sidecar of a cached export whose files all match their checksums, else None."""
    if not path.is_file():
        return None
    try:
        return read_sidecar(path)
    except EngineError as exc:
        if path.is_file() and not quiet:  # not merely removed by another process meanwhile
            log.warning("cached export unusable (%s); exporting again", exc)
        return None


def _open_cached(path: Path, cfg: DetectorConfig) -> tuple[Engine, Sidecar] | None:
    """The cached export at ``path`` as an engine (touched: used now), or None to export it (again)."""
    sidecar = _valid_sidecar(path)
    if sidecar is None:
        return None
    touch(path.parent)
    try:
        engine = open_engine(path, cfg.engine, cfg.precision)
    except EngineError:
        if path.is_file():
            raise
        log.info("cached export %s was evicted by another process; exporting again", path.parent.name)
        return None
    log.info("using cached export %s", path)
    return engine, sidecar


def load_cached(cfg: DetectorConfig, *, progress: bool = True) -> tuple[Engine, tuple[str, ...], PostLimits]:
    """A registry model on OpenVINO / ONNX Runtime: exported into the cache on first use, reused after."""
    from ..models.build import build_model

    max_mb()  # a bad $DETECTOR_CACHE_MAX_MB is one line now, not after a long export
    fmt = FORMAT_OF_ENGINE[cfg.engine]
    calibration = calibration_for(cfg)
    model = None
    if cfg.weights == "random":  # no file to fingerprint: the (seeded) tensors are the weights
        model, names, _ = build_model(cfg, progress=progress)
    sha = weights_sha256(cfg, model)
    key = calibration.key if calibration else None
    from .quantize import NO_VNNI_CACHE_TAG, needs_overflow_fix

    if key is not None and needs_overflow_fix():  # quantized for a CPU without VNNI (7-bit weights, convs only)
        key += NO_VNNI_CACHE_TAG
    entry = exports_dir() / f"{cfg.model}-{cache_key(cfg, sha, fmt, key)}"
    path = entry / ("model.xml" if fmt == "openvino" else "model.onnx")
    hit = _open_cached(path, cfg)
    if hit is not None:
        engine, sidecar = hit
    else:
        if model is None:
            model, names, _ = build_model(cfg, progress=progress)
        with staging(entry) as tmp:
            export_model(model, cfg, names, tmp / path.name, fmt=fmt, weights_sha=sha, progress=progress,
                         calibration=calibration)  # fmt: skip
            if publish(tmp, entry, lambda e: _valid_sidecar(e / path.name, quiet=True) is not None):
                log.info("exported %s to %s", cfg.model, path)
        touch(entry)
        evict(keep=entry)
        sidecar = read_sidecar(path, verify=False)
        engine = open_engine(path, cfg.engine, cfg.precision)
    # torchvision's own limits are baked in; class filtering is left to Detector, as for the torch engine.
    return engine, _class_names(cfg, sidecar, path), PostLimits(cfg.model, cfg.score_threshold, None)


def engine_from_config(cfg: DetectorConfig, *, progress: bool = True) -> tuple[Engine, tuple[str, ...], PostLimits]:
    """The engine ``cfg`` asks for (not the torch engine, which ``Detector.from_config`` builds itself)."""
    from ..models.registry import MODELS

    suffix = Path(cfg.model).suffix
    if suffix in FILE_ENGINES:
        return load_exported(cfg, Path(cfg.model).expanduser())
    if cfg.model not in MODELS:
        raise ConfigError(
            f"the {cfg.engine} engine runs registry models ({', '.join(MODELS)}) or exported .onnx/.xml files, "
            f"not {cfg.model}"
        )
    if cfg.device not in ("auto", "cpu"):
        raise ConfigError(f"the {cfg.engine} engine runs on the CPU; use device cpu (--device cpu) or the torch engine")
    return load_cached(cfg, progress=progress)
