"""What every pre-training objective returns, and helpers they share."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def output(loss: torch.Tensor, **metrics: torch.Tensor) -> dict[str, torch.Tensor]:
    """An objective's result: ``loss`` (scalar, with graph) and detached scalar metrics."""
    return {"loss": loss, **{k: v.detach() for k, v in metrics.items()}}


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that is still connected to the graph (for a batch with nothing to predict)."""
    return sum((t.sum() * 0.0 for t in tensors), torch.zeros((), device=tensors[0].device))


@contextmanager
def eval_mode(module: nn.Module):
    """Temporarily put ``module`` in eval mode (no dropout, BatchNorm running statistics)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
