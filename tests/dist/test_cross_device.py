"""Two gloo processes: losses over negatives gathered across devices give one process's gradients.

Each rank embeds its half of a batch with a DDP-wrapped encoder, gathers the embeddings with gradient, takes the
mean loss over its own anchors and back-propagates; DDP averages the gradients. The result must equal one process
computing the loss on the concatenated batch (see :func:`gather_with_grad`, the reference gather).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.multiprocessing as mp
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel

from piccolo_embed import distributed
from piccolo_embed.losses import OBJECTIVES, ContrastiveObjective

WORLD = 2
PER_RANK = 3
DIM_IN, DIM_OUT = 12, 8


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph to every rank's part.

    The reference for sentence-transformers' ``gather_across_devices``. Gradient convention: the backward of the
    gather *sums* the gradients that every rank's loss puts on this rank's rows (``torch.distributed.nn.all_gather``
    does a reduce-scatter / all-to-all with sum). Each rank's loss is the *mean* over its local anchors, and DDP then
    *averages* parameter gradients over the ``W`` ranks. Together the update is
    ``(1/W) * sum_r d(mean_local_loss_r)/dθ``, which equals the gradient of the mean loss over the global batch:
    exactly what one process computing the loss on the concatenated batch gets. So nothing is multiplied by the
    world size anywhere (the test below checks this).

    Returns:
        ``(world_size * n, ...)`` on ``W`` processes, rank ``r``'s rows at ``[r*n, (r+1)*n)``; ``tensor``
        itself on a single process. Every rank must pass the same shape.
    """
    if not distributed.is_initialized() or distributed.world_size() == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor.contiguous()), dim=0)


def _infonce(q: torch.Tensor, d: torch.Tensor, offset: int, tau: float) -> torch.Tensor:
    """Explicit InfoNCE: local queries against every (gathered) document; positives at ``offset + i``."""
    losses = []
    for i in range(q.shape[0]):
        logits = torch.stack([functional.cosine_similarity(q[i], d[j], dim=0) / tau for j in range(d.shape[0])])
        losses.append(torch.logsumexp(logits, 0) - logits[offset + i])
    return torch.stack(losses).mean()


def _batch() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randn(WORLD * PER_RANK, DIM_IN, generator=generator) for _ in range(3)]  # q, pos, neg


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in module.parameters()]


def _check(rank: int, name: str, loss_fn) -> None:
    """``loss_fn(encoder, columns, gathered)`` -> loss; compares a 2-rank DDP step with one full-batch step."""
    torch.manual_seed(0)
    reference = torch.nn.Linear(DIM_IN, DIM_OUT)
    encoder = DistributedDataParallel(copy.deepcopy(reference))
    columns = _batch()
    full = loss_fn(reference, columns, gathered=False)
    full.backward()
    local = [column[rank * PER_RANK : (rank + 1) * PER_RANK] for column in columns]
    mine = loss_fn(encoder, local, gathered=True)
    mine.backward()  # DDP all-reduces (averages) the parameter gradients here
    for got, want in zip(_grads(encoder.module), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} rank {rank}: {m}")
    torch.testing.assert_close(distributed.all_reduce_mean(mine), full.detach(), rtol=1e-5, atol=1e-6)


def _ours(encoder, columns, *, gathered: bool) -> torch.Tensor:
    q, pos, neg = (encoder(column) for column in columns)
    if gathered:
        pos, neg = gather_with_grad(pos), gather_with_grad(neg)
    offset = distributed.rank() * PER_RANK if gathered else 0
    return _infonce(q, torch.cat([pos, neg]), offset, 0.1)


def _st(objective: ContrastiveObjective):
    spec = OBJECTIVES[objective]

    def run(encoder, columns, *, gathered: bool) -> torch.Tensor:
        loss = MultipleNegativesRankingLoss(
            None, scale=20.0, directions=spec.directions, gather_across_devices=gathered
        )
        return loss.compute_loss_from_embeddings([encoder(column) for column in columns], None)

    return run


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert (distributed.rank(), distributed.world_size()) == (rank, WORLD)
        gathered = gather_with_grad(torch.full((2, 1), float(rank)))
        assert gathered.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
        _check(rank, "gather_with_grad + explicit InfoNCE", _ours)
        for objective in ContrastiveObjective:
            _check(rank, f"sentence-transformers MNRL {objective.value}", _st(objective))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_cross_device_negatives_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)


def test_helpers_are_identities_on_one_process() -> None:
    tensor = torch.ones(2, 3, requires_grad=True)
    assert gather_with_grad(tensor) is tensor
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    assert distributed.all_reduce_mean(tensor) is tensor
