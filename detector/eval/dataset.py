"""COCO-format datasets: validated ground truth and the images behind it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from ..errors import DetectorError

log = logging.getLogger(__name__)


class DatasetError(DetectorError):
    """A COCO annotations or results file, or the image folder behind it, is unusable."""


def read_json(path: Path, what: str) -> Any:
    if path.is_dir():
        raise DatasetError(f"{what} file {path} is a folder; pass the JSON file inside it")
    if not path.is_file():
        raise DatasetError(f"{what} file {path} not found; check the path")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{what} file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix or re-export it"
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{what} file {path} is not UTF-8 JSON; re-export it") from None


def quote_json(value: Any, limit: int = 100) -> str:
    """``value`` as JSON (``NaN``, ``Infinity`` as a file spells them) for an error line, at most about
    ``limit`` characters: a long list or object is abbreviated with ``...`` between whole items,
    a long string with ``...`` inside its quotes; a number is never cut."""
    text = json.dumps(value, default=str)
    if len(text) <= limit:
        return text
    if isinstance(value, (list, dict)):
        pairs = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        items: list[str] = []
        for key, item in pairs:
            piece = quote_json(item, limit // 2)
            if key is not None:
                piece = f"{json.dumps(str(key))}: {piece}"
            if len(", ".join([*items, piece])) > limit - 7:
                break
            items.append(piece)
        inner = ", ".join([*items, "..."])
        return f"{{{inner}}}" if isinstance(value, dict) else f"[{inner}]"
    if isinstance(value, str):
        return json.dumps(value[: max(limit - 5, 1)] + "...")
    return text  # a number: whole, however long


def _need(entry: Any, keys: Sequence[str], where: str, path: Path) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: every entry of '{where}' must be an object; fix the file")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(
            f"{path}: an entry of '{where}' lacks required key(s) {', '.join(missing)}: {quote_json(entry, 120)}"
        )


def validate_ground_truth(data: Any, path: Path) -> dict[str, Any]:
    """Check the keys COCOeval needs; fill ``iscrowd`` (0) and ``area`` (box area) where absent, as COCO does."""
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must be a COCO annotations object with images, annotations and categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path} lacks the list(s) {', '.join(missing)}; is it a COCO instances file?")
    seen: set[int] = set()
    for img in data["images"]:
        _need(img, ("id",), "images", path)
        if not _is_int(img["id"]):
            raise DatasetError(
                f"{path}: image id {img['id']!r} is not an integer; COCO image ids are integers, re-export the file"
            )
        if img["id"] in seen:
            raise DatasetError(f"{path}: image id {img['id']} appears twice in 'images'; give each image its own id")
        seen.add(img["id"])
    for cat in data["categories"]:
        _need(cat, ("id", "name"), "categories", path)
        if not _is_int(cat["id"]):
            raise DatasetError(f"{path}: category id {cat['id']!r} is not an integer; re-export the file")
    cat_ids = {c["id"] for c in data["categories"]}
    orphans: Counter[str] = Counter()
    for ann in data["annotations"]:
        _need(ann, ("id", "image_id", "category_id", "bbox"), "annotations", path)
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
            raise DatasetError(f"{path}: annotation {ann['id']} has bbox {bbox!r}; it must be [x, y, width, height]")
        if ann["image_id"] not in seen:
            orphans["image"] += 1
        if ann["category_id"] not in cat_ids:
            orphans["category"] += 1
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    if orphans["image"]:
        log.warning("%s: %d annotation(s) name an image id that is not in 'images'; they are not scored",
                    path, orphans["image"])  # fmt: skip
    if orphans["category"]:
        log.warning("%s: %d annotation(s) name a category id that is not in 'categories'; they are not scored",
                    path, orphans["category"])  # fmt: skip
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: what a COCO box value or score must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` built from a dict, without its progress prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass
class CocoDataset:
    """Ground truth (a pycocotools ``COCO``) plus the folder of its images."""

    annotations: Path
    images_dir: Path | None
    coco: COCO
    image_ids: list[int]
    """The images to evaluate, sorted by id (all of them, or the first ``limit``)."""

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        if self.images_dir is None:
            raise DatasetError("this dataset has no image folder; pass --images DIR")
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    @property
    def category_names(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.coco.dataset["categories"]}


def load_dataset(
    annotations: str | Path, images_dir: str | Path | None = None, limit: int | None = None
) -> CocoDataset:
    """Read and validate a COCO annotations file; with ``images_dir``, check every image is on disk."""
    path = Path(annotations)
    data = validate_ground_truth(read_json(path, "annotations"), path)
    image_ids = sorted(img["id"] for img in data["images"])
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be at least 1, got {limit}")
        image_ids = image_ids[:limit]
    if not image_ids:
        raise DatasetError(f"{path} lists no images; nothing to evaluate")
    folder = Path(images_dir) if images_dir is not None else None
    coco = coco_from_dict(data)
    if folder is not None:
        if not folder.is_dir():
            raise DatasetError(f"image folder {folder} not found; pass the folder holding the dataset's images")
        for img_id in image_ids:
            if "file_name" not in coco.imgs[img_id]:
                raise DatasetError(f"{path}: image {img_id} has no file_name; add it or score a --results file instead")
        absent = [coco.imgs[i]["file_name"] for i in image_ids if not (folder / coco.imgs[i]["file_name"]).is_file()]
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise DatasetError(
                f"{len(absent)} image(s) listed in {path.name} are missing from {folder}: "
                f"{', '.join(absent[:3])}{more}; "
                "check --images or use --limit"
            )
    return CocoDataset(path, folder, coco, image_ids)
