"""Process-group helpers: pure functions that are no-ops (or identities) on a single process.

Training gathers embeddings across devices inside sentence-transformers' losses (``gather_across_devices``);
``tests/dist/test_cross_device.py`` holds the reference gather and the gradient convention it is checked against.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 on a single process)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 on a single process)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes logs, checkpoints and the final model."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op on a single process)."""
    if is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks without gradient (for logging); identity on a single process."""
    if not is_initialized():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()
