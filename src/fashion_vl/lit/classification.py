"""FashionGen (sub-)category recognition from the fused image and text (reference §3c)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.models.fashionvil import FashionViL


class ClassificationModule(FashionLitModule):
    """Sub-category (121 classes) or category (48) recognition: the network's
    :class:`~fashion_vl.models.heads.ClassificationHead` (``net.heads[head]``) on the fused [CLS]; the
    labels are ``data.label``'s, the head's size ``data.num_classes``.

    Each training sample is a product image with its text; evaluation pairs *every* val image with its
    product's text, as the reference. Logged: ``train/loss``, ``train/acc``; ``{split}/acc`` (micro
    accuracy) and ``{split}/macro_f1`` (over the classes that occur, as sklearn's).

    Args:
        head: the network's head to train (``model.heads.<head>``).
    """

    def __init__(
        self,
        net: FashionViL,
        optimizer: Any,
        scheduler: Any = None,
        head: str = "classification",
        lr_multiplier: float = 20.0,
        fast_modules: Sequence[str] = ("net.image_encoder", "net.visual_embeddings.projection", "net.heads"),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        if head not in net.heads:
            raise ValueError(f"lit.head: the network has no head '{head}' (model.heads: {sorted(net.heads)})")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.head = head
        num_classes = net.heads[head].num_classes
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def logits(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.net.heads[self.head](self.net.encode_fused(input_ids, attention_mask, images).pooled)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.logits(batch["image"], batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        bs = int(logits.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", (logits.argmax(1) == batch["labels"]).float().mean(), batch_size=bs)
        return loss

    def _evaluate(self, batch: dict, metrics: MetricCollection) -> None:
        if not batch["image"].numel():
            return
        rows = batch["image_text_index"]
        logits = self.logits(batch["image"], batch["input_ids"][rows], batch["attention_mask"][rows])
        metrics.update(logits, batch["image_labels"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def _log(self, metrics: MetricCollection) -> None:
        values = {k: 100.0 * float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log(self.test_metrics)
