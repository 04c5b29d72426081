"""Export a registry model (COCO or fine-tuned weights) to a self-contained ONNX / OpenVINO file.

The exported graph is the whole torchvision model for one image: resize,
normalisation, backbone, heads, box decoding, clipping, score threshold and
NMS, so it follows the engines' calling convention -- an RGB float ``(3, H,
W)`` image in 0..1 in; boxes (xyxy, input pixels), scores and labels out --
for any ``H`` and ``W``. A JSON sidecar (:mod:`.sidecar`) goes beside it.
Files are written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision
from torch import nn

from ..config import DetectorConfig
from ..errors import ConfigError, EngineError
from .base import require
from .sidecar import FORMATS, Sidecar, model_files, sha256_file, sidecar_path

if TYPE_CHECKING:
    from .quantize import CalibrationSet

log = logging.getLogger(__name__)

OPSET = 17
TRACE_SIZE = (3, 480, 640)
"""Image size the graph is traced at; height and width stay dynamic in the file."""


class SingleImage(nn.Module):
    """One image in, three tensors out: the calling convention as a graph ONNX can hold."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])
        if isinstance(out, tuple):
            out = out[1]
        det = out[0]
        return det["boxes"], det["scores"], det["labels"]


def state_dict_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's tensors (for weights that exist in no file, e.g. ``random``)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(cfg: DetectorConfig, model: nn.Module | None = None) -> str:
    """sha256 of the weights file ``cfg`` resolves to, or ``random:<tensors' sha256>`` for random weights."""
    from ..models import weights as W
    from ..models.registry import get_spec

    if cfg.weights == "random":
        if model is None:
            raise ValueError("random weights are fingerprinted from the built model")
        return "random:" + state_dict_sha256(model)
    return W.sha256_of(W.resolve(get_spec(cfg.model), cfg.weights, progress=False))


@contextmanager
def progress_line(what: str, enabled: bool = True) -> Iterator[None]:
    """``what ... 12 s`` on stderr, refreshed every second, while the body runs (exports take tens of seconds)."""
    stop = threading.Event()
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def tick() -> None:
        while not stop.wait(1.0):
            print(f"\r{what} ... {time.perf_counter() - start:.0f} s", end="", file=sys.stderr, flush=True)

    thread = threading.Thread(target=tick, name="export-progress", daemon=True) if (enabled and tty) else None
    if enabled and not tty:
        print(f"{what} ...", file=sys.stderr, flush=True)
    if thread is not None:
        thread.start()
    status = "failed in"
    try:
        yield
        status = "done in"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP turned into Interrupted by the CLI
        status = "interrupted after"
        raise
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        if enabled:
            prefix = "\r" if tty else ""
            print(f"{prefix}{what} ... {status} {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


GRAPH_VERSION = 2
"""Changes of the exported graph that the same model and settings would not show (a cache key field):
2: Faster R-CNN's RoI levels merged by one gather (:func:`merge_levels`)."""


def merge_levels(levels: torch.Tensor, unmerged_results: list[torch.Tensor]) -> torch.Tensor:
    """torchvision's ``_onnx_merge_levels`` (MultiScaleRoIAlign's pooled boxes of each FPN level back in
    box order, in a traced graph) as one gather: the same values, bit for bit.

    torchvision scatters each level into a zero tensor with an index expanded to every pooled value
    (boxes x 256 x 7 x 7 int64, four times): at 1,000 proposals that is ~100 ms of Broadcast, Multiply,
    ScatterElements and Reorder on a 2-core CPU, as much as the RoI-align itself. Here the levels are
    concatenated and one ``index_select`` by the inverse of the level order puts every box back."""
    order = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    position = torch.ones_like(order).cumsum(0) - 1  # arange of a traced length, kept dynamic in the graph
    inverse = torch.zeros_like(order).scatter(0, order, position)
    return torch.cat(unmerged_results).index_select(0, inverse)


@contextmanager
def _export_rewrites() -> Iterator[None]:
    """Graph rewrites for export only (eager torchvision is left as it is)."""
    import torchvision.ops.poolers as poolers

    original = poolers._onnx_merge_levels
    poolers._onnx_merge_levels = merge_levels
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def _export_onnx(model: nn.Module, path: Path) -> None:
    require("onnx")  # torch.onnx.export needs it; without it the error would be a traceback deep in torch
    wrapper = SingleImage(model.eval().cpu().float())
    sample = torch.rand(TRACE_SIZE)
    with warnings.catch_warnings(), torch.no_grad(), _export_rewrites():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes, handled by torchvision
        torch.onnx.export(
            wrapper,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes={"image": {1: "height", 2: "width"}, **{k: {0: "n"} for k in ("boxes", "scores", "labels")}},
        )


def _onnx_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    ov = require("openvino")
    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)  # keep fp32 weights; precision is a runtime hint


def _quantize(onnx_path: Path, xml_path: Path, calibration: CalibrationSet) -> None:
    """NNCF int8 of the exported graph, written as IR. For the call only, NNCF's INFO lines and progress
    bars (printed to stdout) and torch's note that NNCF's import finds no CUDA are kept off the console:
    the export's own progress line says what is going on."""
    from .quantize import quantize_openvino

    ov = require("openvino")
    quiet = {name: logging.getLogger(name) for name in ("nncf", "torch.utils.cpp_extension")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), np.errstate(over="ignore"):  # NNCF's statistics overflow
            quantized = quantize_openvino(onnx_path, calibration)
    finally:
        for name, logger in quiet.items():
            logger.setLevel(levels[name])
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)


def export_model(
    model: nn.Module,
    cfg: DetectorConfig,
    class_names: tuple[str, ...],
    out: Path,
    *,
    fmt: str,
    weights_sha: str,
    progress: bool = True,
    calibration: CalibrationSet | None = None,
) -> Path:
    """Write ``model`` as ``out`` (``.onnx`` or ``.xml`` + ``.bin``) with its sidecar; returns ``out``.

    ``cfg.precision`` int8: quantized with NNCF on ``calibration``'s frames (:mod:`.quantize`),
    OpenVINO format only. Everything is written into a temporary folder beside ``out`` and moved
    into place at the end, so an interrupted export leaves no half-written file under the final name.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.suffix != FORMATS[fmt]:
        raise ConfigError(f"a {fmt} export is a {FORMATS[fmt]} file, got {out.name}")
    int8 = cfg.precision == "int8"
    if int8 and fmt != "openvino":
        raise ConfigError("an int8 export is an OpenVINO model; use format openvino (--format openvino)")
    if int8 and calibration is None:
        raise ValueError("an int8 export needs its calibration frames")
    if fmt == "openvino":
        require("openvino")
    if int8:
        require("nncf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        onnx_path = tmp / (out.stem + ".onnx")
        what = f"exporting {cfg.model} (min_size {cfg.min_size}) to {fmt}" + (" int8" if int8 else "")
        with progress_line(what, progress):
            _export_onnx(model, onnx_path)
            if int8:
                assert calibration is not None
                _quantize(onnx_path, tmp / out.name, calibration)
                onnx_path.unlink()
            elif fmt == "openvino":
                _onnx_to_openvino(onnx_path, tmp / out.name)
                onnx_path.unlink()
        files = {p.name: sha256_file(p) for p in model_files(tmp / out.name)}
        sidecar = Sidecar(
            format=fmt,
            model=cfg.model,
            class_names=tuple(class_names),
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            score_threshold=cfg.score_threshold,
            nms_threshold=cfg.nms_threshold,
            max_detections=cfg.max_detections,
            precision=cfg.precision,
            calibration=calibration.description if int8 and calibration is not None else None,
            weights_sha256=weights_sha,
            files=files,
            exporter=f"torch {torch.__version__}, torchvision {torchvision.__version__}, opset {OPSET}",
        )
        sidecar_path(tmp / out.name).write_text(sidecar.to_json(), encoding="utf-8")
        # Model files first, sidecar last: a reader never sees a sidecar whose files are not there yet.
        for src in [*model_files(tmp / out.name), sidecar_path(tmp / out.name)]:
            src.replace(out.parent / src.name)
    except EngineError:
        raise
    except OSError as exc:
        why = exc.strerror or exc
        raise EngineError(f"cannot write the export to {out.parent} ({why}); pick another --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_from_config(cfg: DetectorConfig, *, fmt: str, out: Path, progress: bool = True) -> tuple[Path, Sidecar]:
    """Build ``cfg``'s registry model with its weights and export it (``detector export``)."""
    from ..models.build import build_model
    from ..models.registry import MODELS
    from .sidecar import read_sidecar

    if cfg.model not in MODELS:
        raise ConfigError(
            f"only registry models can be exported ({', '.join(MODELS)}); "
            "for fine-tuned weights pass --model <registry name> --weights FILE.pth"
        )
    calibration = calibration_for(cfg)
    model, class_names, _ = build_model(cfg, progress=progress)
    sha = weights_sha256(cfg, model)
    export_model(model, cfg, class_names, out, fmt=fmt, weights_sha=sha, progress=progress, calibration=calibration)
    return out, read_sidecar(out, verify=False)


def calibration_for(cfg: DetectorConfig) -> CalibrationSet | None:
    """int8's calibration frames: ``cfg.calibration`` (a video or an image folder), else the shipped
    demo clip; None for other precisions. Read before any export, so a bad path fails at once; on a CPU
    without int8 dot products it also says, then, that int8 will be slower there (not after a quantization
    of a minute or more)."""
    if cfg.precision != "int8":
        return None
    from ..resources import DEMO_CLIP
    from .openvino_engine import say_int8_is_slower_here
    from .quantize import needs_overflow_fix, read_calibration

    calibration = read_calibration(cfg.calibration or DEMO_CLIP)
    if needs_overflow_fix():
        say_int8_is_slower_here()
    return calibration


def describe(sidecar: Sidecar) -> str:
    """One line for the CLI."""
    return (
        f"{sidecar.model}, {len(sidecar.class_names)} classes, min_size {sidecar.min_size}, "
        f"max_size {sidecar.max_size}, score >= {sidecar.score_threshold}, precision {sidecar.precision}"
    )
