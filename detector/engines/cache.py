"""The export cache: where registry models exported on first use live, its size limit and eviction.

Layout: ``cache_dir()/exports/<model>-<key>/`` holds ``model.xml`` + ``model.bin`` (or
``model.onnx``) and the sidecar ``model.json``, which is written last and checks every file
by sha256, so an entry is either valid or exported again.

Bounded: after a new entry is written, the least recently used entries (the folder's mtime,
touched on every use) are removed until the cache fits ``$DETECTOR_CACHE_MAX_MB``
(default 2048). Safe between processes:

- a new entry is exported into ``exports/.staging-*`` and renamed into place whole;
- an entry is removed by renaming it to ``exports/.trash-*`` first, then deleting that, so
  no process ever sees a half-deleted entry under its real name;
- the entry just written and any entry used in the last minute (maybe being loaded by
  another process) are kept; a process whose entry vanishes under it exports it again.

A loaded engine holds the model in memory (OpenVINO maps the ``.bin``, which stays readable
after its removal on POSIX), so evicting an entry a running process loaded earlier is harmless.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, EngineError

log = logging.getLogger(__name__)

MAX_MB_ENV = "DETECTOR_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
MB = 1024 * 1024
IN_USE_S = 60.0
"""An entry used this recently may be being loaded by another process: never evicted."""
STALE_S = 24 * 3600.0
"""A staging folder this old belongs to an export that died (killed): swept."""
STAGING, TRASH = ".staging-", ".trash-"


def cache_dir() -> Path:
    """Where registry models exported on first use are kept (``$DETECTOR_CACHE`` overrides)."""
    env = os.environ.get("DETECTOR_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "detector"


def exports_dir() -> Path:
    return cache_dir() / "exports"


def max_mb() -> float:
    """The size limit in MB (MiB): ``$DETECTOR_CACHE_MAX_MB``, else :data:`DEFAULT_MAX_MB`."""
    text = os.environ.get(MAX_MB_ENV, "").strip()
    if not text:
        return float(DEFAULT_MAX_MB)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also NaN
        raise ConfigError(f"{MAX_MB_ENV} must be a size in MB (0 or more), got {text!r}")
    return value


@dataclass(frozen=True)
class CacheEntry:
    """One exported model in the cache."""

    path: Path
    model: str
    format: str
    precision: str
    size: int
    """Bytes of every file in the folder."""
    last_used: float
    """The folder's mtime (touched on every use), seconds since the epoch."""

    @property
    def size_mb(self) -> float:
        return self.size / MB


def _folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


def _describe(path: Path) -> CacheEntry | None:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    meta: dict[str, object] = {}
    try:
        data = json.loads((path / "model.json").read_text(encoding="utf-8"))
        meta = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        pass  # an entry without a readable sidecar (an old, interrupted export) still takes space

    def field(key: str) -> str:
        value = meta.get(key)
        return str(value) if value is not None else "?"

    return CacheEntry(path, field("model"), field("format"), field("precision"), _folder_size(path), mtime)


def entries() -> list[CacheEntry]:
    """Every entry, least recently used first (staging and trash folders are not entries)."""
    root = exports_dir()
    try:
        children = list(root.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise EngineError(f"cannot read the export cache {root} ({exc.strerror or exc})") from None
    found = [_describe(p) for p in children if not p.name.startswith(".") and p.is_dir()]
    return sorted((e for e in found if e is not None), key=lambda e: e.last_used)


def touch(entry: Path) -> None:
    """Mark ``entry`` as used now (eviction removes the least recently used first)."""
    try:
        os.utime(entry)
    except OSError:
        pass  # removed meanwhile, or a read-only cache: it is still usable


def remove_entry(entry: Path) -> bool:
    """Rename ``entry`` out of the way, then delete it; False if it was gone already (another process)."""
    trash = entry.with_name(f"{TRASH}{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        entry.rename(trash)
    except FileNotFoundError:
        return False
    except OSError as exc:  # e.g. a file held open on Windows: leave it for next time
        log.debug("cannot remove cache entry %s (%s)", entry, exc)
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _sweep(now: float) -> None:
    """Delete what died half-way: trash folders, and staging folders of exports killed long ago."""
    try:
        children = list(exports_dir().iterdir())
    except OSError:
        return
    for p in children:
        try:
            stale = p.name.startswith(TRASH) or (p.name.startswith(STAGING) and now - p.stat().st_mtime > STALE_S)
        except OSError:
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)


def evict(keep: Path | None = None) -> tuple[int, int]:
    """Remove least recently used entries until the cache fits its limit; returns (entries, bytes) removed.

    ``keep`` (the entry just written) and entries used in the last :data:`IN_USE_S` seconds stay.
    """
    limit = int(max_mb() * MB)
    now = time.time()
    try:
        found = entries()
    except EngineError as exc:  # the export at hand is fine; a cache we cannot list is not worth failing for
        log.warning("%s; nothing evicted", exc)
        return 0, 0
    total = sum(e.size for e in found)
    removed = freed = 0
    for e in found:
        if total - freed <= limit:
            break
        if e.path == keep or now - e.last_used < IN_USE_S:
            continue
        if remove_entry(e.path):
            removed += 1
            freed += e.size
    if removed:
        log.info("export cache: removed %d entries (%.0f MB) over the %g MB limit", removed, freed / MB, max_mb())
    _sweep(now)
    return removed, freed


def clear() -> tuple[int, int]:
    """Remove every entry (``detector cache clear``); returns (entries, bytes) removed."""
    removed = freed = 0
    for e in entries():
        if remove_entry(e.path):
            removed += 1
            freed += e.size
    _sweep(time.time())
    return removed, freed


@contextmanager
def staging(entry: Path) -> Iterator[Path]:
    """A private folder to export ``entry`` into before :func:`publish`; deleted if left unpublished."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING}{entry.name}-", dir=entry.parent))
    except OSError as exc:
        raise EngineError(
            f"cannot write the export cache {entry.parent} ({exc.strerror or exc}); set DETECTOR_CACHE to a "
            "writable folder"
        ) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, entry: Path, existing_ok: Callable[[Path], bool]) -> bool:
    """Rename the staged export ``tmp`` to ``entry``; True if it became the entry.

    If ``entry`` exists meanwhile (another process exported the same key) and ``existing_ok(entry)``,
    it is kept and False returned (``tmp`` is then deleted by :func:`staging`); otherwise it is removed first.
    """
    for _ in range(3):
        try:
            tmp.rename(entry)  # atomic; fails if entry exists and is not empty
            return True
        except OSError as exc:
            if not entry.exists():
                raise EngineError(f"cannot move the export into the cache at {entry} ({exc.strerror or exc})") from None
        if existing_ok(entry):
            return False
        remove_entry(entry)
    raise EngineError(f"cannot move the export into the cache at {entry}; another process keeps writing it")
