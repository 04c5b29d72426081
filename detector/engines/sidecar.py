"""The JSON sidecar beside an exported model: what it is, what it was made for, and checksums.

An ONNX or OpenVINO file knows nothing about class names, the input size it
resizes to or the weights it came from; the sidecar (``model.json`` beside
``model.onnx`` / ``model.xml``) carries them, plus the sha256 of every file of
the export so that a truncated, corrupt or swapped file is caught at load time
with one line instead of a runtime crash or silently wrong boxes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import EXPORT_FORMATS
from ..errors import EngineError
from ..models.weights import sha256_of as sha256_file

FORMAT_VERSION = 1
FORMATS = EXPORT_FORMATS


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """Metadata of one exported model (``model.json`` beside ``model.onnx`` or ``model.xml``)."""

    format: str
    """``onnx`` or ``openvino``."""
    model: str
    """The registry model it was exported from."""
    class_names: tuple[str, ...]
    min_size: int
    max_size: int
    score_threshold: float
    nms_threshold: float
    max_detections: int
    precision: str
    """The precision it was exported for: fp32 or bf16 (an OpenVINO inference hint, the file is fp32),
    or int8 (quantized into the file)."""
    weights_sha256: str
    """sha256 of the source weights file (``random:<sha256 of the tensors>`` for untrained weights)."""
    files: dict[str, str]
    """File name -> sha256 of every file of the export (``model.onnx``; ``model.xml`` and ``model.bin``)."""
    calibration: str | None = None
    """int8: what calibrated the quantization (JSON: the video's sha256 and frame indices, or the
    images' names and sha256s)."""
    format_version: int = FORMAT_VERSION
    exporter: str = ""
    """torch / torchvision versions that wrote it (informational)."""

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        return json.dumps(data, indent=2) + "\n"


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def model_files(model_path: Path) -> list[Path]:
    """The files an export consists of: the ``.onnx``, or the ``.xml`` and its ``.bin``."""
    if model_path.suffix == ".xml":
        return [model_path, model_path.with_suffix(".bin")]
    return [model_path]


def read_sidecar(model_path: Path, *, verify: bool = True) -> Sidecar:
    """Read and check the sidecar of ``model_path``; every problem is one :class:`EngineError` line."""
    path = sidecar_path(model_path)
    hint = "re-export it with `detector export`"
    if not path.is_file():
        raise EngineError(f"{model_path} has no sidecar {path.name} (class names, sizes, checksums); {hint}")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EngineError(f"sidecar {path} is not valid JSON; {hint}") from None
    fields = {f.name for f in dataclasses.fields(Sidecar)}
    required = {f.name for f in dataclasses.fields(Sidecar) if f.default is dataclasses.MISSING}
    if not isinstance(data, dict) or not required <= data.keys():
        missing = sorted(required - set(data)) if isinstance(data, dict) else sorted(required)
        raise EngineError(f"sidecar {path} lacks {', '.join(missing)}; {hint}")
    try:
        sidecar = Sidecar(**{k: v for k, v in data.items() if k in fields})
        sidecar = dataclasses.replace(sidecar, class_names=tuple(str(n) for n in sidecar.class_names))
        ok = (
            isinstance(sidecar.files, dict)
            and all(isinstance(v, str) for v in sidecar.files.values())
            and isinstance(sidecar.min_size, int)
            and isinstance(sidecar.max_size, int)
            and len(sidecar.class_names) > 0
        )
    except TypeError:
        ok = False
    if not ok:
        raise EngineError(f"sidecar {path} has malformed values; {hint}")
    if sidecar.format_version != FORMAT_VERSION:
        raise EngineError(f"sidecar {path} has format version {sidecar.format_version}, not {FORMAT_VERSION}; {hint}")
    if FORMATS.get(sidecar.format) != model_path.suffix:
        raise EngineError(f"sidecar {path} describes a {sidecar.format} export, not {model_path.name}; {hint}")
    if verify:
        for file in model_files(model_path):
            if not file.is_file():
                raise EngineError(f"{file} is missing; {hint}")
            expected = sidecar.files.get(file.name)
            if expected is None:
                raise EngineError(f"sidecar {path} does not belong to {file.name}; {hint}")
            if sha256_file(file) != expected:
                raise EngineError(
                    f"{file} does not match its sidecar's checksum (truncated, corrupt or replaced); {hint}"
                )
    return sidecar
