"""FashionViL pre-training: one task per step drawn from a categorical distribution (the reference),
or the weighted sum of all tasks every step (``mode: sum``), validated by full-gallery ITC retrieval."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.lit.retrieval import GalleryRetrievalModule
from fashion_vl.losses._dist import rank
from fashion_vl.models.fashionvil import FashionViL

REFERENCE_TASK_WEIGHTS = {"itm": 0.15, "pac": 0.15, "itc": 0.2, "mvc": 0.2, "mlm": 0.15, "mpfc": 0.15}


class TaskSampler:
    """Which tasks a step trains, and with what weight.

    ``mode="sample"`` draws one task per step with probabilities proportional to ``weights``; the draw
    is a function of ``(seed, step)`` only, so every rank draws the same task with no communication, and
    a resumed run draws what the uninterrupted one would have. ``mode="sum"`` trains every task with a
    positive weight each step, its loss multiplied by the weight.
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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return [(self.names[int(torch.multinomial(self.weights, 1, generator=g))], 1.0)]


class PretrainModule(GalleryRetrievalModule):
    """The pre-training task: the sampler, the objectives, per-task logging, and optimisation.

    Logged: ``train/loss`` every step; ``train/{task}_loss`` and the task's own metrics
    (``train/{task}_acc``...) as their mean over the steps of each logging interval that trained the
    task (averaged across ranks), only for tasks that ran in it. Validation: full-gallery ITC recall on
    the data's val source (FashionGen val).

    Args:
        net: the FashionViL encoder (its weights are what fine-tuning loads).
        objectives: task name -> partial objective (``_partial_: true``) completed with ``net``.
        task_weights: task name -> probability weight (``mode: sample``) or loss weight (``mode: sum``);
            tasks without a weight, or with weight 0, are not built.
        mode: ``sample`` (reference) or ``sum``.
        seed: seeds the task draw and each objective's per-step random choices.
        optimizer, scheduler, lr_multiplier, fast_modules, ks: see :class:`GalleryRetrievalModule`.
    """

    def __init__(
        self,
        net: FashionViL,
        objectives: Mapping[str, Callable[[FashionViL], nn.Module]],
        task_weights: Mapping[str, float],
        optimizer: Any,
        scheduler: Any = None,
        mode: str = "sample",
        seed: int = 0,
        lr_multiplier: float = 20.0,
        fast_modules: Sequence[str] = ("net.image_encoder", "net.visual_embeddings.projection", "objectives"),
        ks: Sequence[int] = (1, 5, 10),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules, ks)
        self.save_hyperparameters(logger=False, ignore=["net", "objectives", "optimizer", "scheduler"])
        unknown = sorted(set(task_weights) - set(objectives))
        if unknown:
            raise KeyError(
                f"lit.task_weights names tasks without an objective: {unknown} (have {sorted(objectives)})"
            )
        self.sampler = TaskSampler(task_weights, mode, seed)
        self.objectives = nn.ModuleDict({name: objectives[name](net) for name in self.sampler.names})
        self.seed = seed
        self._task_sums: dict[str, torch.Tensor] = {}
        self._task_counts: dict[str, int] = {}

    def _generator(self, step: int) -> torch.Generator:
        """Per-step, per-rank stream for an objective's random choices (swaps, drop-out positions)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1009 + rank())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        bs = self.batch_size_of(batch)
        total = None
        for name, weight in self.sampler(step):
            out = self.objectives[name](self.net, batch, self._generator(step))
            for key, value in out.items():
                tag = f"train/{name}_{key}"
                self._task_sums[tag] = self._task_sums.get(tag, 0.0) + value.detach().float()
                self._task_counts[tag] = self._task_counts.get(tag, 0) + 1
            total = weight * out["loss"] if total is None else total + weight * out["loss"]
        self.log("train/loss", total, batch_size=bs, prog_bar=True)
        self.log("train/contrastive_scale", self.net.contrastive_norm.scale.detach(), batch_size=bs)
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Write the per-task means of the interval to the loggers.

        Not through ``self.log``: Lightning re-logs a key's last value on every logging step where the
        key was not logged, so a task drawn at step 3 would show its step-3 loss again at steps 4, 5...
        until it is drawn again. Here each task's value is the mean over the steps that trained it.
        """
        every = self.trainer.log_every_n_steps if self.trainer else 1
        if self.global_step % every != 0 or not self._task_sums:
            return
        tags = sorted(self._task_sums)
        sums = torch.stack([self._task_sums[t] for t in tags])
        counts = torch.tensor([self._task_counts[t] for t in tags], dtype=sums.dtype, device=sums.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        means = {t: float(v) for t, v in zip(tags, (sums / counts).tolist())}
        for logger in self.loggers:
            logger.log_metrics(means, step=self.global_step)
        self._task_sums.clear()
        self._task_counts.clear()
