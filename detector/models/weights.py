"""Finding, verifying, downloading and loading checkpoint files.

Resolution order for a registry model's COCO weights:
1. an explicit path (``--weights PATH``);
2. the weights folders: ``$DETECTOR_WEIGHTS_DIR`` (``os.pathsep``-separated),
   ``./weights`` and the project's ``weights/``;
3. torch's hub cache, ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch`` by default);
4. a download from torchvision's URL (or ``$DETECTOR_WEIGHTS_MIRROR``) into the
   hub cache, unless offline (``DETECTOR_OFFLINE=1`` or ``--offline``).

Files named like torchvision's (``name-<sha256 prefix>.pth``) are checked
against that prefix before loading; loading always uses ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WeightsError
from .registry import HASH_RE, ModelSpec

PROJECT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
OFFICIAL_URL_BASE = "https://download.pytorch.org/models/"


def weights_dirs() -> list[Path]:
    """Folders searched for weight files, in order, without duplicates."""
    dirs = [Path(p) for p in os.environ.get("DETECTOR_WEIGHTS_DIR", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "weights", PROJECT_WEIGHTS_DIR]
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def hub_checkpoints_dir() -> Path:
    """torch's hub cache (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline() -> bool:
    return os.environ.get("DETECTOR_OFFLINE", "").lower() in ("1", "true", "yes")


def download_url(spec: ModelSpec) -> str:
    mirror = os.environ.get("DETECTOR_WEIGHTS_MIRROR")
    return mirror.rstrip("/") + "/" + spec.file_name if mirror else spec.url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_prefix(path: Path) -> str | None:
    match = HASH_RE.search(path.name)
    return match.group(1) if match else None


def verify(path: Path) -> str | None:
    """Check a file against the sha256 prefix in its name; returns the prefix checked."""
    prefix = expected_prefix(path)
    if prefix is None:
        return None
    actual = sha256_of(path)
    if not actual.startswith(prefix):
        raise WeightsError(
            f"checksum mismatch for {path}: its name says sha256 {prefix}..., the file has "
            f"{actual[: len(prefix)]}...; the file is corrupt or truncated, delete it and download it again"
        )
    return prefix


@dataclass(frozen=True)
class Candidate:
    path: Path
    where: str


def candidates(spec: ModelSpec) -> Iterator[Candidate]:
    for d in weights_dirs():
        yield Candidate(d / spec.file_name, f"weights folder {d}")
    yield Candidate(hub_checkpoints_dir() / spec.file_name, "torch hub cache")


def find_local(spec: ModelSpec) -> Path | None:
    for cand in candidates(spec):
        if cand.path.is_file():
            return cand.path
    return None


def download(spec: ModelSpec, *, progress: bool = True) -> Path:
    """Download ``spec``'s weights into the hub cache, checking the sha256 prefix."""
    dest = hub_checkpoints_dir() / spec.file_name
    url = download_url(spec)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=spec.sha256_prefix, progress=progress)
    except RuntimeError as exc:  # raised by torch.hub on a hash mismatch
        raise WeightsError(f"download of {url} is corrupt ({exc}); try again") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"cannot download {spec.name} weights from {url} ({reason}); put {spec.file_name} in "
            f"{weights_dirs()[0]} or {dest.parent}, or pass --weights PATH (or --weights random to try "
            "the pipeline untrained)"
        ) from None
    return dest


def resolve(
    spec: ModelSpec, explicit: str | None = None, *, offline: bool | None = None, progress: bool = True
) -> Path:
    """Path of a weights file for ``spec`` following the module's resolution order."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found; check the --weights path")
        return path
    local = find_local(spec)
    if local is not None:
        return local
    if offline if offline is not None else is_offline():
        raise WeightsError(
            f"no weights for {spec.name}: put {spec.file_name} (from {spec.url}) in "
            f"{weights_dirs()[0]} or {hub_checkpoints_dir()}, or pass --weights PATH "
            "(or --weights random to try the pipeline untrained)"
        )
    return download(spec, progress=progress)


def _load_failure(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` failed, in our words (torch's own messages run to paragraphs)."""
    with path.open("rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        return "it is not a PyTorch file; pass a .pth saved with torch.save(model.state_dict(), ...)"
    if "weights only" in str(exc).lower() or "weights_only" in str(exc):
        return "it holds Python objects besides tensors; save model.state_dict() with torch.save and pass that"
    return "it is corrupt or truncated; download or save it again"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Verify (when the name carries a hash) and load a state_dict with ``weights_only=True``.

    Accepts a plain state_dict or a training checkpoint holding one under
    ``model`` or ``state_dict``.
    """
    verify(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise WeightsError(f"cannot load weights file {path}: {_load_failure(path, exc)}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds no state_dict of tensors; save model.state_dict()")
    return obj


def save_with_hash(state_dict: dict[str, torch.Tensor], folder: Path, stem: str) -> Path:
    """Save ``state_dict`` under torchvision's naming convention ``stem-<sha256[:8]>.pth``.

    For publishing fine-tuned weights in the same layout.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".pth", delete=False) as tmp:
        torch.save(state_dict, tmp)
    tmp_path = Path(tmp.name)
    final = folder / f"{stem}-{sha256_of(tmp_path)[:8]}.pth"
    tmp_path.replace(final)
    return final
