"""What every task with several objectives shares: which objectives a step trains and with what weight
(:class:`TaskSampler`), the step's random streams (:func:`step_generator`, seeded by
:func:`fashion_vl.dist.step_seed`), and the
call of the objectives under the one protocol (:class:`Objectives`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fashion_vl.dist import rank as current_rank
from fashion_vl.dist import step_seed
from fashion_vl.losses.objective import StepContext


def step_generator(
    seed: int,
    step: int,
    *,
    per_rank: bool = True,
    stream: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """A generator seeded with :func:`step_seed` (this process's rank when ``per_rank``), on ``device``
    (CPU by default; diffusers draws sampling noise on the latents' device)."""
    rank = current_rank() if per_rank else None
    return torch.Generator(device or "cpu").manual_seed(step_seed(seed, step, rank, stream))


class TaskSampler:
    """Which tasks a step trains, and with what weight.

    ``mode="sample"`` draws one task per step with probabilities proportional to ``weights`` (FashionViL's
    pre-training); the draw is a function of ``(seed, step)`` only, so every rank draws the same task
    with no communication, and a resumed run draws what the uninterrupted one would have. ``mode="sum"``
    trains every task with a positive weight each step, its loss multiplied by the weight (UniFashion).
    """

    def __init__(self, weights: Mapping[str, float], mode: str = "sample", seed: int = 0) -> None:
        if mode not in ("sample", "sum"):
            raise ValueError(f"lit.mode must be 'sample' or 'sum', not {mode!r}")
        self.names = [name for name, w in weights.items() if w > 0]
        if not self.names:
            raise ValueError(
                "lit.task_weights: every weight is zero; give at least one task a positive weight"
            )
        if any(w < 0 for w in weights.values()):
            raise ValueError("lit.task_weights must be non-negative")
        self.weights = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.double)
        self.mode = mode
        self.seed = seed

    def __call__(self, step: int) -> list[tuple[str, float]]:
        if self.mode == "sum":
            return [(n, float(w)) for n, w in zip(self.names, self.weights)]
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        return [(self.names[int(torch.multinomial(self.weights, 1, generator=g))], 1.0)]

    def as_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights)}


class Objectives(nn.ModuleDict):
    """A task's objectives (name -> objective, only those with a positive weight) and how a step runs
    them: the sampler picks the objectives and their weights, one generator per step (seeded by the
    seed, the step and the rank) serves them in turn, each is called as ``objective(net, batch, step)``
    (:class:`~fashion_vl.losses.objective.StepContext` with the generator and the task's shared
    ``encoding``), and the loss is the weighted sum.

    Args:
        objectives: name -> objective; the names that ``task_weights`` gives a positive weight are kept.
        task_weights: name -> weight (a probability in ``sample`` mode, a loss factor in ``sum`` mode).
        mode, seed: see :class:`TaskSampler`.
    """

    def __init__(
        self,
        objectives: Mapping[str, nn.Module],
        task_weights: Mapping[str, float],
        mode: str = "sample",
        seed: int = 0,
    ) -> None:
        unknown = sorted(set(task_weights) - set(objectives))
        if unknown:
            raise KeyError(
                f"lit.task_weights names objectives that are not built: {unknown} (have {sorted(objectives)})"
            )
        sampler = TaskSampler(task_weights, mode, seed)
        super().__init__({name: objectives[name] for name in sampler.names})
        self.sampler = sampler
        self.seed = seed

    def check_heads(self, net: nn.Module) -> None:
        """Fail at construction, naming the config key, when an objective reads a head
        (``objective.head``) that the network lacks."""
        heads = getattr(net, "heads", {})
        for name, objective in self.items():
            head = getattr(objective, "head", None)
            if isinstance(head, str) and head not in heads:
                raise ValueError(
                    f"lit.objectives.{name} reads the head '{head}' but the network has none: set "
                    f"model.heads.{head} (the network has {sorted(heads)})"
                )

    def forward(
        self, net: nn.Module, batch: dict, step: int, encoding: object = None
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """``(weighted loss, {objective: its output})`` of training step ``step``."""
        context = StepContext(step_generator(self.seed, step), encoding)
        total: torch.Tensor | None = None
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        for name, weight in self.sampler(step):
            out = self[name](net, batch, context)
            outputs[name] = out
            total = weight * out["loss"] if total is None else total + weight * out["loss"]
        return total, outputs
