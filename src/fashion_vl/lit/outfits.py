"""Outfit complementary item retrieval on Polyvore Outfits with CSA-Net (reference §3d)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.lit.base import FashionLitModule, SplitRecallHooks
from fashion_vl.metrics.composed import ComposedGalleryRecall
from fashion_vl.models.csanet import CSANet


class OutfitRetrievalModule(SplitRecallHooks, FashionLitModule):
    """Train CSA-Net with in-batch symmetric InfoNCE between conditioned questions and blanks; evaluate
    class-balanced recall@10/30/50 of outfit queries (the mean of their conditioned question items)
    against the blank gallery restricted to the blank's category.

    Logged: ``train/loss``; ``{split}/r@10``, ``r@30``, ``r@50``, ``avg``. ``recall``: further
    :class:`~fashion_vl.metrics.composed.ComposedGalleryRecall` arguments (``ranking``, ``per_rank``:
    ours by default, FashionViL's under ``fidelity=reference``).
    """

    def __init__(
        self,
        net: CSANet,
        loss: nn.Module,
        optimizer: Any,
        scheduler: Any = None,
        lr_multiplier: float = 1.0,
        fast_modules: Sequence[str] = (),
        ks: Sequence[int] = (10, 30, 50),
        recall: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.loss = loss
        self.val_recall = ComposedGalleryRecall(ks, class_balanced=True, **(recall or {}))
        self.test_recall = ComposedGalleryRecall(ks, class_balanced=True, **(recall or {}))

    def batch_size_of(self, batch: dict) -> int:
        return int(batch["blank_image"].shape[0])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        question = self.net.embed_question(
            batch["question_image"], batch["question_category"], batch["blank_category"]
        )
        blank = self.net.embed_blank(batch["blank_image"])
        loss = self.loss(question, blank)
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size_of(batch))
        return loss

    def _evaluate(self, batch: dict, metric: ComposedGalleryRecall) -> None:
        if not batch["blank_image"].numel():
            return
        entries = batch["blank_id"].shape[0]
        metric.update_gallery(
            self.net.embed_blank(batch["blank_image"]),
            batch["blank_id"],
            batch["blank_id"],
            batch["blank_category"],
        )
        if not batch["question_image"].numel():
            return
        rows = batch["question_entry"]
        items = self.net.embed_question(
            batch["question_image"], batch["question_category"], batch["blank_category"][rows]
        )
        summed = items.new_zeros(entries, items.shape[1]).index_add_(0, rows, items)
        counts = torch.bincount(rows, minlength=entries).clamp_min(1)
        query = summed / counts[:, None]
        real = (~batch["fake_data"]) & (torch.bincount(rows, minlength=entries) > 0)
        metric.update_queries(query[real], batch["blank_id"][real], batch["blank_category"][real])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_recall)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_recall)
