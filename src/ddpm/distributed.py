"""One code path for 1 process and for N under torchrun (DistributedDataParallel).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process and every
helper here is a no-op. NCCL on CUDA, gloo on CPU. A process group the caller already made (its own
torchrun script) is used as it is and left to the caller: ddpm destroys only a group it created.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Rank 0 writes checkpoints and sample grids while the others wait at a barrier: give it time.
BARRIER_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands among the processes of a run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # setup() created the process group, so teardown() destroys it

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group that torchrun describes, or the caller's own (if any), and pick this
    process's device. Pass the returned DistInfo to teardown() when done.

    Args:
        device: the resolved device; with several processes a CUDA device becomes cuda:LOCAL_RANK.
    """
    if dist.is_initialized():  # the caller's group: use it, and leave it to the caller
        rank, world_size, owns = dist.get_rank(), dist.get_world_size(), False
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return DistInfo(), device
        rank, owns = int(os.environ["RANK"]), True
    # Without torchrun's LOCAL_RANK (a group made by mp.spawn, say) the processes share one node.
    info = DistInfo(rank, int(os.environ.get("LOCAL_RANK", rank)), world_size, owns)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return info, device


def teardown(info: DistInfo) -> None:
    """Leave the process group if setup() created it; a group the caller made stays the caller's."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over processes (x itself in a single process)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of x over processes (x itself in a single process)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag on every process (so that all stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def shard(n: int, info: DistInfo) -> range:
    """This process's contiguous share of items 0 .. n-1 (shares differ in size by at most one)."""
    per, extra = divmod(n, info.world_size)
    start = info.rank * per + min(info.rank, extra)
    return range(start, start + per + (1 if info.rank < extra else 0))


def gather_to_main(x: torch.Tensor, num_items: int) -> torch.Tensor | None:
    """Every process's share of items 0 .. num_items-1, concatenated in rank order on rank 0's CPU; None
    on the other ranks (x itself, on the CPU, in one process).

    x is this process's shard(num_items, ...) of the items along dim 0. Each other rank sends its
    share to rank 0 alone, one rank at a time, into one preallocated result: no rank but rank 0 ever
    holds more than its own share (50k 128x128x3 uint8 images are 2.5 GB, on rank 0 only), and rank 0's
    device holds one share at a time (NCCL sends from the GPU).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x.cpu()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    wire = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    if rank != 0:
        if len(x):
            dist.send(x.contiguous().to(wire), dst=0)
        return None
    out = torch.empty((num_items, *x.shape[1:]), dtype=x.dtype)
    for r in range(world_size):
        share = shard(num_items, DistInfo(r, 0, world_size))
        if r == 0:
            out[share.start:share.stop] = x.cpu()
        elif len(share):
            part = torch.empty((len(share), *x.shape[1:]), dtype=x.dtype, device=wire)
            dist.recv(part, src=r)
            out[share.start:share.stop] = part.cpu()
    return out
