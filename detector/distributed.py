"""Several processes under ``torchrun``: one process per GPU (NCCL) or per CPU share (gloo).

Shared by ``detector eval`` (:mod:`detector.eval.evaluator`) and ``detector run``
(:mod:`detector.multi`). Nothing here does anything in a single process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import DetectorConfig


def env_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group; ``(0, 1)`` when there is none."""
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
