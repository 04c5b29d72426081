"""Multi-process evaluation under ``torchrun``; the helpers live in :mod:`detector.distributed`."""

from ..distributed import distributed_from_env

__all__ = ["distributed_from_env"]
