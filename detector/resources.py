"""Files shipped inside the package: YAML presets, the demo clip, the weights manifest and a
small COCO-trained TorchScript detector, found the same way from a checkout or a wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _presets_dir() -> Path:
    """The YAML presets: ``detector/configs`` in an installed wheel (pyproject.toml maps the package
    ``detector.configs`` to the checkout's top-level ``configs/``), that ``configs/`` in a checkout
    (editable install or ``PYTHONPATH``)."""
    checkout = PACKAGE.parent / "configs"
    if not any((PACKAGE / "configs").glob("*.yaml")) and (PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    return PACKAGE / "configs"


PRESETS_DIR = _presets_dir()
DATA_DIR = PACKAGE / "data"
DEMO_CLIP = DATA_DIR / "vtest_excerpt.mp4"
"""60 frames of OpenCV's vtest.avi (768x576, 10 fps); see ``data/README.md``."""
WEIGHTS_MANIFEST = DATA_DIR / "weights_manifest.json"
SHIPPED_MODELS = {"d2go": DATA_DIR / "d2go_faster_rcnn_fbnetv3a_c4_coco_int8.torchscript.pt"}
"""Models that ship with the package, by name: D2Go Faster R-CNN FBNetV3A, int8, COCO-trained
(Apache-2.0), 2.5 MB; its speed: ``benchmarks/results/README.md``."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path | None:
    """The shipped preset called ``name`` (with or without ``.yaml``), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if "/" in stem or "\\" in stem:
        return None
    path = PRESETS_DIR / f"{stem}.yaml"
    return path if path.is_file() else None
