"""Training the attribute judge: cross-entropy per attribute head on real synthetic product images.

The trained judge scores generated pictures (``metrics.generation.attribute_accuracy``); its
validation accuracy on real images is the ceiling that score can reach.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.metrics.generation import AttributeAccuracy
from fashion_vl.models.attribute_judge import AttributeJudge


class AttributeJudgeModule(FashionLitModule):
    """Loss = sum over heads of ``head_weight * CE`` (labels ``-1`` ignored).

    Batches (``data.garment_labels.GarmentLabelDataModule``): ``image`` ``[B,3,H,W]`` and one ``[B]``
    label per head. Logged: ``train/loss``, ``train/<head>_loss``; ``{val,test}/<head>_acc``,
    ``{split}/acc`` (their mean) and ``{split}/all_acc`` (every head right), in percent.

    Args:
        net: the :class:`AttributeJudge` (``conf/model/attribute_judge.yaml``).
        head_weights: per-head loss weights (default 1 each).
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`.
    """

    def __init__(
        self,
        net: AttributeJudge,
        optimizer: Any,
        scheduler: Any = None,
        head_weights: dict[str, float] | None = None,
        lr_multiplier: float = 1.0,
        fast_modules: tuple[str, ...] = (),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.heads = tuple(net.heads)
        unknown = set(head_weights or {}) - set(self.heads)
        if unknown:
            raise ValueError(f"lit.head_weights names heads the judge does not have: {sorted(unknown)}")
        self.head_weights = {h: float((head_weights or {}).get(h, 1.0)) for h in self.heads}
        self.val_acc = AttributeAccuracy(self.heads)
        self.test_acc = AttributeAccuracy(self.heads)

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["image"].shape[0])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        bs = self.batch_size_of(batch)
        total = logits[self.heads[0]].new_zeros(())
        for head in self.heads:
            target = batch[head]
            if not bool((target >= 0).any()):
                continue  # a batch without this label would give CE a NaN mean
            loss = F.cross_entropy(logits[head], target, ignore_index=-1)
            self.log(f"train/{head}_loss", loss, batch_size=bs)
            total = total + self.head_weights[head] * loss
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        return total

    def _evaluate(self, batch: dict, metric: AttributeAccuracy) -> None:
        if not batch["image"].numel():
            return
        metric.update(self.net(batch["image"]), {h: batch[h] for h in self.heads})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_acc)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_acc)

    def _log(self, split: str, metric: AttributeAccuracy) -> None:
        values = metric.compute()  # synced across ranks by torchmetrics
        metric.reset()
        self.log_dict({f"{split}/{k}": v for k, v in values.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log("val", self.val_acc)

    def on_test_epoch_end(self) -> None:
        self._log("test", self.test_acc)
