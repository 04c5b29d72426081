"""Names of several sources: ``[name=]spec`` entries as the command line, a ``--sources`` file and the
Python API (``run``/``stream`` over a list) give them, names derived from specs (a file's stem,
``camera0``, a stream's host, port and path, never its password or query), and the check that names are
distinct and usable as file names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DetectorError
from ..io.sources import STREAM_SCHEMES
from .multi import redact_text

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$")


@dataclass(frozen=True)
class SourceEntry:
    """One source as given: its spec and its name (given with ``name=`` or derived from the spec)."""

    name: str
    spec: str
    given: bool = False

    @property
    def live(self) -> bool:
        return self.spec.isdigit() or self.spec.lower().startswith(STREAM_SCHEMES)


def derive_name(spec: str) -> str:
    """A file-safe name for a spec: a file's stem, ``camera0``, or a stream's host, port and path
    (never its user, password or query)."""
    if spec.isdigit():
        return f"camera{spec}"
    if spec.lower().startswith(STREAM_SCHEMES):
        parts = urlsplit(spec)
        host = parts.hostname or "stream"
        text = host + (f"_{parts.port}" if parts.port else "") + parts.path
    else:
        text = Path(spec).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.-")
    return name or "source"


def parse_entry(text: str, *, where: str) -> SourceEntry:
    """``[name=]spec``; a ``name=`` prefix only when the whole text is not an existing file."""
    text = text.strip()
    match = _NAME_PREFIX.match(text)
    if match and not Path(text).exists():
        return SourceEntry(match.group(1), match.group(2).strip(), given=True)
    if "=" in text.split("://", 1)[0] and not Path(text).exists():
        raise DetectorError(f"{where}: {redact_text(text.split('=', 1)[0])!r} is not a usable source name "
                            "(letters, digits, '.', '_' and '-', not starting with '.' or '-')")  # fmt: skip
    return SourceEntry(derive_name(text), text)


def read_sources_file(path: Path) -> list[SourceEntry]:
    """One source per line, ``[name=]spec``; blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise DetectorError(f"cannot read --sources {path} ({reason})") from None
    entries = []
    for n, line in enumerate(lines, 1):
        text = re.sub(r"(^|\s)#.*$", "", line).strip()
        if text:
            entries.append(parse_entry(text, where=f"{path}:{n}"))
    if not entries:
        raise DetectorError(f"--sources {path} names no source (one per line, [name=]source, # comments)")
    return entries


def check_names(entries: list[SourceEntry]) -> None:
    """Refuse, in one line, names that clash or cannot be file names."""
    seen: dict[str, str] = {}
    for entry in entries:
        if not _NAME.match(entry.name):
            raise DetectorError(f"source name {entry.name!r} is not usable as a file name; name it (NAME=SOURCE)")
        label = redact_text(entry.spec)
        if entry.name in seen:
            raise DetectorError(
                f"{seen[entry.name]} and {label} would both be named {entry.name}; "
                "give each its own name (NAME=SOURCE, e.g. in a --sources file)"
            )
        seen[entry.name] = label
