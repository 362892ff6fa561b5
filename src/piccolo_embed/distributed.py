"""Process-group helpers: pure functions that are no-ops (or identities) on a single process.

All of piccolo-embed's distributed logic is here, so the gradient-scaling convention lives in one place: see
:func:`gather_with_grad`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_initialized() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 on a single process)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 on a single process)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Rank on this node as set by ``torchrun``/``accelerate launch`` (0 when not launched by one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes logs, checkpoints and the final model."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op on a single process)."""
    if is_initialized():
        dist.barrier()


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph to every rank's part.

    Gradient convention (the one place it is decided): the backward of the gather *sums* the gradients that
    every rank's loss puts on this rank's rows (``torch.distributed.nn.all_gather`` does a reduce-scatter /
    all-to-all with sum). Each rank's loss is the *mean* over its local anchors, and DDP then *averages*
    parameter gradients over the ``W`` ranks. Together the update is
    ``(1/W) * sum_r d(mean_local_loss_r)/dθ``, which equals the gradient of the mean loss over the global batch:
    exactly what one process computing the loss on the concatenated batch gets. So nothing is multiplied by
    the world size anywhere (the ``tests/dist`` gloo test checks this).

    Returns:
        ``(world_size * n, ...)`` on ``W`` processes, rank ``r``'s rows at ``[r*n, (r+1)*n)``; ``tensor``
        itself on a single process. Every rank must pass the same shape.
    """
    if not is_initialized() or world_size() == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor.contiguous()), dim=0)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks without gradient (for logging); identity on a single process."""
    if not is_initialized():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()
