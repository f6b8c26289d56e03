"""Parameter groups and learning-rate schedules (plain torch; the LightningModules call these)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY_SUFFIXES = ("bias", "LayerNorm.weight", "LayerNorm.bias")


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def param_groups(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    fast_modules: Sequence[str] = (),
    lr_multiplier: float = 1.0,
    frozen_ok: bool = True,
    no_decay_below_2d: bool = False,
) -> list[dict]:
    """AdamW groups as in FashionViL: the base group (BERT) at ``lr`` without decay on biases and
    LayerNorms; parameters under ``fast_modules`` (CNN, projection, heads) at ``lr * lr_multiplier``
    with decay on everything. Frozen parameters are left out (no optimizer state).

    ``no_decay_below_2d``: BLIP-2 / LAVIS's rule instead (UniFashion): no decay on every parameter
    with fewer than 2 dimensions (biases, all norms whatever their names: ``layernorm``,
    ``ln_vision``; the ITC temperature), in the fast group too (``fast_no_decay``).

    Raises if a name in ``fast_modules`` matches no parameter, so a renamed module cannot silently
    fall back to the slow learning rate.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad or not frozen_ok]
    for prefix in fast_modules:
        if not any(_under(n, [prefix]) for n, _ in module.named_parameters()):
            raise ValueError(f"lit.fast_modules: '{prefix}' matches no parameter of {type(module).__name__}")
    base_decay, base_no_decay, fast, fast_no_decay = [], [], [], []
    for name, p in named:
        low_dim = no_decay_below_2d and p.ndim < 2
        if _under(name, fast_modules):
            (fast_no_decay if low_dim else fast).append(p)
        elif low_dim or (not no_decay_below_2d and name.endswith(NO_DECAY_SUFFIXES)):
            base_no_decay.append(p)
        else:
            base_decay.append(p)
    groups = [
        {"name": "base", "params": base_decay, "lr": lr, "weight_decay": weight_decay},
        {"name": "base_no_decay", "params": base_no_decay, "lr": lr, "weight_decay": 0.0},
        {"name": "fast", "params": fast, "lr": lr * lr_multiplier, "weight_decay": weight_decay},
        {"name": "fast_no_decay", "params": fast_no_decay, "lr": lr * lr_multiplier, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def warmup_multistep(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 0,
    warmup_factor: float = 0.25,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> LambdaLR:
    """Linear warm-up from ``warmup_factor`` to 1 over ``warmup_steps``, then x``gamma`` at each milestone.

    torch has both pieces but chaining them (``SequentialLR``) shifts the milestones by the warm-up,
    so the reference's schedule (15k warm-up, decays at 45k and 90k) is one lambda here.
    """
    milestones = sorted(milestones)

    def factor(step: int) -> float:
        decay = gamma ** sum(step >= m for m in milestones)
        if warmup_steps > 0 and step < warmup_steps:
            alpha = step / warmup_steps
            return decay * (warmup_factor * (1 - alpha) + alpha)
        return decay

    return LambdaLR(optimizer, factor)
