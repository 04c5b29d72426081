"""COCO category names in torchvision's 91-slot layout.

A torchvision COCO detector's label ``i`` is COCO's ``category_id`` ``i``;
index 0 is the background and the ten ids COCO never used are ``"N/A"``.
"""

from __future__ import annotations

COCO_CLASS_NAMES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

UNUSED_NAMES = frozenset({"__background__", "N/A"})


def coco_category_ids() -> list[int]:
    """The 80 ids COCO uses (1..90 with holes)."""
    return [i for i, name in enumerate(COCO_CLASS_NAMES) if name not in UNUSED_NAMES]


def label_name(names: tuple[str, ...], label: int) -> str:
    """Name of ``label``, or its number when the table has no entry for it."""
    return names[label] if 0 <= label < len(names) else str(label)
