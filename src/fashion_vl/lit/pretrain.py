"""FashionViL pre-training: one task per step drawn from a categorical distribution (the reference),
or the weighted sum of all tasks every step (``mode: sum``; :mod:`fashion_vl.lit.objectives`), validated
by full-gallery ITC retrieval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.lit.objectives import Objectives
from fashion_vl.lit.retrieval import GalleryRetrievalModule
from fashion_vl.models.fashionvil import FashionViL

REFERENCE_TASK_WEIGHTS = {"itm": 0.15, "pac": 0.15, "itc": 0.2, "mvc": 0.2, "mlm": 0.15, "mpfc": 0.15}


class PretrainModule(GalleryRetrievalModule):
    """The pre-training task: the sampler, the objectives, per-task logging, and optimisation.

    Logged: ``train/loss`` every step; ``train/{task}_loss`` and the task's own metrics
    (``train/{task}_acc``...) as their mean over the steps of each logging interval that trained the
    task (averaged across ranks), only for tasks that ran in it. Validation: full-gallery ITC recall on
    the data's val source (FashionGen val).

    Args:
        net: the FashionViL network with the heads the objectives read (``net.heads``) and MPFC's image
            tokenizer (its encoder's weights are what fine-tuning loads).
        objectives: task name -> objective (weight-free; it reads its head from ``net.heads``).
        task_weights: task name -> probability weight (``mode: sample``) or loss weight (``mode: sum``);
            tasks without a weight, or with weight 0, never run (their heads stay untrained).
        mode: ``sample`` (reference) or ``sum`` (one generator per step then serves the tasks in turn).
        seed: seeds the task draw and the objectives' per-step random choices.
        optimizer, scheduler, lr_multiplier, fast_modules, ks, recall: see :class:`GalleryRetrievalModule`.
    """

    def __init__(
        self,
        net: FashionViL,
        objectives: Mapping[str, nn.Module],
        task_weights: Mapping[str, float],
        optimizer: Any,
        scheduler: Any = None,
        mode: str = "sample",
        seed: int = 0,
        lr_multiplier: float = 20.0,
        fast_modules: Sequence[str] = ("net.image_encoder", "net.visual_embeddings.projection", "net.heads"),
        ks: Sequence[int] = (1, 5, 10),
        recall: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules, ks, recall=recall)
        self.save_hyperparameters(logger=False, ignore=["net", "objectives", "optimizer", "scheduler"])
        self.objectives = Objectives(objectives, task_weights, mode, seed)
        self.objectives.check_heads(net)
        self._task_sums: dict[str, torch.Tensor] = {}
        self._task_counts: dict[str, int] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        bs = self.batch_size_of(batch)
        total, outputs = self.objectives(self.net, batch, self.global_step)
        self.step_tasks = list(outputs)  # named by the non-finite guard when it skips a step
        for name, out in outputs.items():
            for key, value in out.items():
                tag = f"train/{name}_{key}"
                self._task_sums[tag] = self._task_sums.get(tag, 0.0) + value.detach().float()
                self._task_counts[tag] = self._task_counts.get(tag, 0) + 1
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
