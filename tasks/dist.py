"""Distributed data parallel on CPU: the process group that ``torchrun`` sets up, with gloo.

Every training entry point runs unchanged as one process or under
``torchrun --nproc_per_node N -m ann.train ...`` or ``-m snn.train ...``: :func:`init_distributed` reads the variables torchrun
exports (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins a gloo group when
``WORLD_SIZE > 1``; otherwise it does nothing and reports rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "is_main", "barrier", "all_reduce_mean", "shard"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group: ``rank`` in ``[0, world_size)``."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group (gloo) if there is one; idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(rank=0, world_size=1)
    if not dist.is_initialized():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun, "
                                   f"e.g. `torchrun --nproc_per_node {world} -m ann.train ...` (or snn.train)")
        dist.init_process_group(backend="gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over all ranks (``x`` itself when not distributed)."""
    if not dist.is_initialized():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def shard(global_batch: int, info: DistInfo) -> slice:
    """This rank's contiguous slice of a global batch; the global batch must split evenly.

    Equal shards make DDP's gradient average equal to the gradient of the mean loss over the global batch,
    so N processes reproduce one process (up to float summation order).
    """
    if global_batch % info.world_size:
        raise ValueError(f"global batch size {global_batch} does not split over {info.world_size} processes: "
                         f"use a batch size divisible by the number of processes")
    per = global_batch // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)
