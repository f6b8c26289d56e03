"""What every task shares: optimisation from config, parameter groups, scheduler stepping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning import LightningModule
from torch import nn

from fashion_vl.lit.nonfinite import NonFiniteGuard
from fashion_vl.models.checkpoint import migrate_checkpoint
from fashion_vl.optim import param_groups
from fashion_vl.utils.speed import multi_tensor_kwargs


class FashionLitModule(LightningModule):
    """Base LightningModule: holds ``net`` and builds AdamW groups and the schedule from config.

    Args:
        net: the ``nn.Module`` (built by ``conf/model``).
        optimizer: partial optimizer (``_partial_: true``), called with the parameter groups.
        scheduler: partial scheduler called with the optimizer, stepped every optimisation step.
        lr_multiplier: learning-rate factor for ``fast_modules`` (FashionViL: 20).
        fast_modules: parameter-name prefixes trained at ``lr * lr_multiplier``.

    ``no_decay_below_2d`` (class attribute): which weight-decay exemptions the task follows, see
    :func:`~fashion_vl.optim.param_groups` (FashionViL's by name; UniFashion's modules set LAVIS's).
    """

    no_decay_below_2d: bool = False

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_multiplier = lr_multiplier
        self.fast_modules = tuple(fast_modules)

    def configure_optimizers(self) -> dict:
        defaults = getattr(self.optimizer_factory, "keywords", None)
        if defaults is None or "lr" not in defaults:
            raise ValueError("lit.optimizer must be a partial (`_partial_: true`) that sets `lr`")
        groups = param_groups(
            self,
            lr=defaults["lr"],
            weight_decay=defaults.get("weight_decay", 0.0),
            fast_modules=self.fast_modules,
            lr_multiplier=self.lr_multiplier,
            no_decay_below_2d=self.no_decay_below_2d,
        )
        optimizer = self.optimizer_factory(
            params=groups, **multi_tensor_kwargs(self.optimizer_factory, self._parameter_device())
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "step"},
        }

    def configure_callbacks(self) -> list:
        """The non-finite guard, unless the trainer already has one (``callbacks.nonfinite``): every task
        skips steps with a NaN/inf loss or gradient norm (:mod:`fashion_vl.lit.nonfinite`)."""
        trainer = self._trainer
        if trainer is not None and any(isinstance(c, NonFiniteGuard) for c in trainer.callbacks):
            return []
        return [NonFiniteGuard()]

    def _parameter_device(self) -> torch.device:
        """Where the parameters will live when training (the strategy's device once attached)."""
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else self.device

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before the networks owned every weight load with their keys renamed
        (:func:`~fashion_vl.models.checkpoint.migrate_checkpoint`); Lightning calls this before the
        strict load of ``state_dict`` (``fvl-eval ckpt_path=``, resuming, ``trainer.test``)."""
        migrate_checkpoint(checkpoint)


class SplitRecallHooks:
    """Epoch hooks of the retrieval tasks: ``{split}_recall`` (a gallery metric) is reset when its
    epoch starts and its values are logged as ``{split}/<key>`` when it ends. Resetting at the start,
    not after computing, keeps the test embeddings available to ``fvl-eval +viz=true``. Mix in before
    :class:`FashionLitModule`; override :meth:`_log_recall` to log more from the same metric."""

    def _log_recall(self, split: str) -> None:
        values = getattr(self, f"{split}_recall").compute()
        self.log_dict({f"{split}/{k}": v for k, v in values.items()})

    def on_validation_epoch_start(self) -> None:
        self.val_recall.reset()

    def on_test_epoch_start(self) -> None:
        self.test_recall.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_recall("val")

    def on_test_epoch_end(self) -> None:
        self._log_recall("test")
