"""Overlapped stages: decode (reader thread) -> detect (caller's thread, or several) -> render +
write (writer thread), joined by bounded queues, with per-stage timings.

Every thread has a stop signal and is joined in ``finally``; an exception in any stage (or
Ctrl-C, which lands in the caller's thread) stops the others promptly, and the error is
re-raised to the caller. A source error (e.g. a damaged video) first lets the frames decoded
before it through. Queue waits poll the stop signal, so a stage never hangs on a full or empty
queue after another one died.

The rooms: :mod:`.stats` (per-stage timings), :mod:`.feed` (the reader and how frames become
batches: the place for a batcher over several sources), :mod:`.ordering` (batches handed on in
frame order from several detecting threads), :mod:`.loop` (the detect loop, a class, and
:func:`run_pipeline`), :mod:`.stream` (:func:`stream` for embedding), :mod:`.defaults` (counts
and their defaults), :mod:`.sync` (the stop-aware queue helpers they share).
"""

from .defaults import DEFAULT_DETECT_THREADS, check_batch_memory, check_counts, default_batch_size
from .loop import DetectLoop, run_pipeline
from .multi import MultiStream, multi_stream
from .stats import STAGES, Stats
from .stream import Stream, check_arguments, several_sources, stream

__all__ = [
    "DEFAULT_DETECT_THREADS",
    "STAGES",
    "DetectLoop",
    "MultiStream",
    "Stats",
    "Stream",
    "check_arguments",
    "several_sources",
    "check_batch_memory",
    "check_counts",
    "default_batch_size",
    "multi_stream",
    "run_pipeline",
    "stream",
]
