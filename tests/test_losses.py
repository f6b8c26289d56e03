"""Contrastive loss: against a naive reference, and distributed with gradient through the gather."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fashion_vl.losses import ContrastiveLoss
from tests.helpers.ports import free_port


def naive_infonce(a: torch.Tensor, b: torch.Tensor, symmetric: bool) -> torch.Tensor:
    losses = []
    for i in range(a.shape[0]):
        logits = torch.stack([a[i] @ b[j] for j in range(b.shape[0])])
        losses.append(-torch.log_softmax(logits, 0)[i])
    loss = torch.stack(losses).mean()
    if symmetric:
        loss = 0.5 * (loss + naive_infonce(b, a, symmetric=False))
    return loss


@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_naive_reference(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss = ContrastiveLoss(symmetric=symmetric)(a, b)
    assert torch.allclose(loss, naive_infonce(a, b, symmetric), atol=1e-6)


def test_perfect_alignment_gives_low_loss() -> None:
    a = 16 * F.normalize(torch.eye(4), dim=1)
    assert ContrastiveLoss()(a, a) < 1e-3


def _worker(
    rank: int, world: int, port: int, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, out: dict
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(a.shape[1], a.shape[1], bias=False))
        with torch.no_grad():
            model.module.weight.copy_(weight)
        n = a.shape[0] // world
        local_a, local_b = a[rank * n : (rank + 1) * n], b[rank * n : (rank + 1) * n]
        loss = ContrastiveLoss(symmetric=True, gather=True)(model(local_a), model(local_b))
        loss.backward()  # DDP averages parameter gradients across ranks
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            out["loss"] = torch.stack(losses).mean()
            out["grad"] = model.module.weight.grad.clone()
    finally:
        dist.destroy_process_group()


def test_ddp_gather_matches_single_process_on_concatenated_batch() -> None:
    """2-process gloo run == one process on the concatenated batch: same loss and same gradients."""
    g = torch.Generator().manual_seed(1)
    a, b, weight = (
        torch.randn(8, 6, generator=g),
        torch.randn(8, 6, generator=g),
        torch.randn(6, 6, generator=g),
    )
    single = torch.nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        single.weight.copy_(weight)
    reference = ContrastiveLoss(gather=True)(single(a), single(b))
    reference.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(2, free_port(), a, b, weight, out), nprocs=2, start_method="spawn")
        loss, grad = out["loss"], out["grad"]
    assert torch.allclose(loss, reference.detach(), atol=1e-6)
    assert torch.allclose(grad, single.weight.grad, atol=1e-6)
    # the test can tell gathering from not gathering: per-rank negatives give another loss
    with torch.no_grad():
        local_only = torch.stack(
            [ContrastiveLoss()(single(a[i * 4 : i * 4 + 4]), single(b[i * 4 : i * 4 + 4])) for i in range(2)]
        ).mean()
    assert not torch.allclose(local_only, reference.detach(), atol=1e-3)
