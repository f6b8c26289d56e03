"""Ranks, cross-rank gathering for losses and metrics (every gather is the identity on one process), and
the seeds of per-step, per-rank random streams."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x [B, ...]`` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums, for this rank's slice, the gradients every rank computed for it. Under DDP
    (which averages parameter gradients) this makes a per-rank loss over the gathered batch give the
    gradient of the single-process loss over the concatenated batch.
    """
    if world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (equal shapes), without gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_padded(x: torch.Tensor, pad_value: int | float) -> torch.Tensor:
    """Gather ``[B, L_rank]`` tensors whose ``L`` differs across ranks: pad to the longest, then gather."""
    if world_size() == 1:
        return x
    length = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    padded = torch.nn.functional.pad(x, (0, int(length.item()) - x.shape[1]), value=pad_value)
    return gather_no_grad(padded)


# Streams per (seed, step, rank) for a module that needs several independent ones (training noise,
# validation noise, test sampling in the try-on editor): stream numbers 0 .. STREAMS - 1.
STREAMS = 3


def step_seed(seed: int, step: int, rank: int | None = None, stream: int | None = None) -> int:
    """The seed of a step's random stream: a function of the run's ``seed`` and the ``step`` only (the
    same on every rank: the task sampler's), or also of the ``rank`` (each rank its own draws: the
    objectives'), and of a ``stream`` number below :data:`STREAMS`. Never of wall time or of how the
    run got there, so a resumed run draws what the uninterrupted one would have. (The samplers' epoch
    order is ``step_seed(seed, epoch)``.)"""
    value = seed * 1_000_003 + step
    if rank is not None:
        value = value * 1009 + rank
    if stream is not None:
        if not 0 <= stream < STREAMS:
            raise ValueError(f"stream must be in [0, {STREAMS}), not {stream}")
        value = value * STREAMS + stream
    return value
