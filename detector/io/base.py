"""The context-manager base shared by sources and sinks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T", bound="Closeable")


class Closeable:
    """``with obj:`` closes ``obj`` on the way out, also on errors; ``close()`` is safe to call twice."""

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release what the object holds."""


def enter_sinks(stack: contextlib.ExitStack, sinks: Iterable[Any]) -> list[Any]:
    """A caller's own sinks, made ready for a run: context managers entered on ``stack``, and the
    ``close()`` of any other one called when ``stack`` unwinds (on success, on error, on a stop)."""
    entered = []
    for sink in sinks:
        if isinstance(sink, contextlib.AbstractContextManager):
            entered.append(stack.enter_context(sink))
            continue
        close = getattr(sink, "close", None)
        if callable(close):
            stack.callback(close)
        entered.append(sink)
    return entered
