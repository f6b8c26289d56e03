"""The one objective protocol, what every objective returns, and helpers they share.

An objective is a weight-free ``nn.Module`` called as ``objective(net, batch, step)`` with the network
(every weight is the network's: heads included), the batch, and a :class:`StepContext`: the step's
random generator and, when the task computes passes that several objectives read, that shared encoding
(UniFashion's frozen ViT and Q-Former passes run once per step). It returns :func:`output`: ``loss``
and detached scalar metrics. ``lit/objectives.py`` samples or weights the objectives and makes the
step's generator.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class StepContext:
    """What a training step gives each objective besides the network and the batch.

    Attributes:
        generator: the step's random stream (a function of the run's seed, the step and the rank, so a
            resumed run draws what the uninterrupted one would); the step's objectives draw from it in
            turn.
        encoding: the passes the step's objectives share, computed once by the task
            (:class:`~fashion_vl.models.outputs.ImageTextEncoding` in UniFashion phase 1,
            :class:`~fashion_vl.models.outputs.ComposedEncoding` in phase 2); ``None`` for objectives
            that run the network themselves (FashionViL's).
    """

    generator: torch.Generator
    encoding: Any = None


class Objective(Protocol):
    """``objective(net, batch, step) -> {"loss": scalar with graph, <metric>: detached scalar}``."""

    def __call__(self, net: nn.Module, batch: dict, step: StepContext) -> dict[str, torch.Tensor]: ...


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
