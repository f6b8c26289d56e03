"""FashionGen (sub-)category recognition from the fused image and text (reference §3c)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from fashion_vl.lit.base import FashionLitModule
from fashion_vl.models.fashionvil import FashionViL

# FashionGen's label spaces
NUM_CLASSES = {"subcategory": 121, "category": 48}


class ClassificationHead(nn.Module):
    """Pooled [CLS] of the fusion -> BERT head transform -> linear classifier."""

    def __init__(self, net: FashionViL, num_classes: int) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(net.text_encoder.config)
        self.classifier = nn.Linear(net.hidden_size, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(pooled))


class ClassificationModule(FashionLitModule):
    """Sub-category (121 classes) or category (48) recognition; switch with ``data.label``.

    Each training sample is a product image with its text; evaluation pairs *every* val image with its
    product's text, as the reference. Logged: ``train/loss``, ``train/acc``; ``{split}/acc`` (micro
    accuracy) and ``{split}/macro_f1`` (over the classes that occur, as sklearn's).

    Args:
        label: ``subcategory`` or ``category`` (``${data.label}``).
        num_classes: defaults to FashionGen's size of the label space.
    """

    def __init__(
        self,
        net: FashionViL,
        optimizer: Any,
        scheduler: Any = None,
        label: str = "subcategory",
        num_classes: int | None = None,
        lr_multiplier: float = 20.0,
        fast_modules: Sequence[str] = ("net.image_encoder", "net.visual_embeddings.projection", "head"),
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        if label not in NUM_CLASSES:
            raise ValueError(f"lit.label must be one of {sorted(NUM_CLASSES)}, not {label!r}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        num_classes = num_classes or NUM_CLASSES[label]
        self.head = ClassificationHead(net, num_classes)
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
        return self.head(self.net.encode_fused(input_ids, attention_mask, images).pooled)

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
