"""Per-stage timings: :mod:`detector.stats` (outside this package, so that code which only adds up
timings -- a ``--ray`` driver -- imports neither the stages nor torch)."""

from ..stats import STAGES, Stats

__all__ = ["STAGES", "Stats"]
