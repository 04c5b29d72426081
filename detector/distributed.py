"""Several processes under ``torchrun``: one process per GPU (NCCL) or per CPU share (gloo).

The one home of the process-group helpers, used by ``detector eval``
(:mod:`detector.eval.evaluator`) and ``detector run`` over folders (:mod:`detector.folder_run`):
joining the group, and :class:`Group`'s collectives, which agree on errors so one process's
failure ends the step on all of them. Nothing here does anything in a single process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from .config import DetectorConfig
from .errors import DetectorError

log = logging.getLogger(__name__)
T = TypeVar("T")


def env_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group; ``(0, 1)`` when there is none."""
    import torch.distributed as dist  # here, not at the top: a --ray driver and its tasks never load torch

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed_from_env(
    cfg: DetectorConfig, *, timeout: timedelta | None = None
) -> Iterator[tuple[DetectorConfig, int]]:
    """Yield ``(cfg, rank)``. Under torchrun (``WORLD_SIZE`` > 1) this joins the process group --
    NCCL with one GPU per process by ``LOCAL_RANK`` when CUDA is there and asked for, gloo
    otherwise -- and leaves it on the way out; in a single process it changes nothing.
    ``timeout``: how long a collective waits for the other processes (torch's default if None)."""
    if env_world_size() <= 1:
        yield cfg, 0
        return
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device.startswith(("auto", "cuda")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        cfg = cfg.replace(device=f"cuda:{local_rank}")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    try:
        yield cfg, dist.get_rank()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class PeerFailed(Exception):  # noqa: N818 (not an error of this process)
    """Another process failed; rank 0 reports it, this one exits 2 without a word."""


def describe_error(exc: Exception) -> str:
    """One line for another process to report: a user's error as it is, anything else with its type
    (its traceback logged here, on the process where it happened)."""
    if isinstance(exc, DetectorError):
        return str(exc)
    log.exception("unexpected error")  # the traceback, on the process where it happened
    return f"{type(exc).__name__}: {exc}"


class Group:
    """Collectives over the process group, or their one-process equivalents."""

    def __init__(self) -> None:
        self.rank, self.size = world()

    def all(self, value: T) -> list[T]:
        if self.size == 1:
            return [value]
        got: list[Any] = [None] * self.size
        import torch.distributed as dist

        dist.all_gather_object(got, value)
        return got

    def to_rank0(self, value: T) -> list[T]:
        """Every process's ``value`` on rank 0; ``[]`` elsewhere."""
        if self.size == 1:
            return [value]
        got: list[Any] | None = [None] * self.size if self.rank == 0 else None
        import torch.distributed as dist

        dist.gather_object(value, got, dst=0)
        return got or []

    def from_rank0(self, value: T) -> T:
        if self.size == 1:
            return value
        box: list[Any] = [value]
        import torch.distributed as dist

        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def by_rank0(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every process its result; when it fails, it fails on
        every process (rank 0 raises the error, the others :class:`PeerFailed`)."""
        if self.size == 1:
            return fn()
        value, error = None, None
        if self.rank == 0:
            try:
                value = fn()
            except Exception as exc:
                error = describe_error(exc)
        value, error = self.from_rank0((value, error))
        if error is not None:
            if self.rank == 0:
                raise DetectorError(error)
            raise PeerFailed
        return value  # type: ignore[return-value]

    def step(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` here, then agree: when it failed on any process, it fails on every one."""
        if self.size == 1:
            return fn()
        value, error = None, None
        try:
            value = fn()
        except Exception as exc:
            error = describe_error(exc)
        self.fail_if(self.all(error))
        return value  # type: ignore[return-value]

    def fail_if(self, errors: list[str | None]) -> None:
        """Raise on every process when any entry (one per process) is an error: rank 0 the
        error, the others :class:`PeerFailed`."""
        message = one_line(errors)
        if message is None:
            return
        if self.rank != 0:
            raise PeerFailed
        raise DetectorError(message)


def one_line(errors: list[str | None]) -> str | None:
    """The line that reports the processes' errors (one entry per process), or None."""
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    rank, first = failed[0]
    if len(errors) == 1 or (len(failed) == len(errors) and len({e for _, e in failed}) == 1):
        return first  # one process, or the same error everywhere
    more = f" (and {len(failed) - 1} more process(es) failed; see their messages above)" if len(failed) > 1 else ""
    return f"process {rank} of {len(errors)}: {first}{more}"
