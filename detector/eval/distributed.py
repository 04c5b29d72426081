"""Multi-process evaluation under ``torchrun``: one process per GPU (NCCL) or per CPU share (gloo)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ..config import DetectorConfig


@contextlib.contextmanager
def distributed_from_env(cfg: DetectorConfig) -> Iterator[tuple[DetectorConfig, int]]:
    """Yield ``(cfg, rank)``. Under torchrun (``WORLD_SIZE`` > 1) this joins the process group --
    NCCL with one GPU per process by ``LOCAL_RANK`` when CUDA is there and asked for, gloo
    otherwise -- and leaves it on the way out; in a single process it changes nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield cfg, 0
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device.startswith(("auto", "cuda")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        cfg = cfg.replace(device=f"cuda:{local_rank}")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield cfg, dist.get_rank()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
