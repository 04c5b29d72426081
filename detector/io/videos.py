"""A folder or glob of videos: what ``detector run FOLDER`` runs one video at a time."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError
from .sources import GLOB_CHARS, IMAGE_EXTS, glob_base, image_names

VIDEO_EXTS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".m2ts", ".3gp"}
)
"""File endings taken as videos in a folder or glob (any file OpenCV decodes runs when named on its own)."""


@dataclass(frozen=True)
class VideoFolder:
    """The videos of a folder or glob, sorted, and each one's name relative to it (sub-folders kept)."""

    origin: Path
    paths: list[Path]
    names: list[str]
    folder_name: str
    """What ``runs/<folder_name>/`` is called: the folder (for a glob, the one before its first wildcard)."""


def find_videos(spec: str | Path | None) -> VideoFolder | None:
    """The videos of a folder or glob; None when ``spec`` is neither or holds no video.
    Raises ``SourceError`` when it holds both images and videos."""
    if spec is None:
        return None
    text = str(spec)
    path = Path(text).expanduser()
    base: Path | None
    if any(c in text for c in GLOB_CHARS) and not path.exists():
        base = folder = glob_base(str(path))
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    elif path.is_dir():
        base, folder, found = None, path, sorted(path.iterdir())
    else:
        return None
    videos = [p for p in found if p.suffix.lower() in VIDEO_EXTS and p.is_file()]
    if not videos:
        return None
    images = [p for p in found if p.suffix.lower() in IMAGE_EXTS]
    if images:
        one, other = f"*{images[0].suffix}", f"*{videos[0].suffix}"
        fix = (
            f"run each kind on its own: detector run '{path / one}', then '{path / other}'"
            if base is None
            else f"give a glob of one kind, e.g. ending in {one} or {other}"
        )
        raise SourceError(f"{text} holds both images ({len(images)}) and videos ({len(videos)}); {fix}")
    name = folder.resolve().name.strip("*?[]") or "videos"
    return VideoFolder(path, videos, image_names(videos, base), name)
