"""Text-guided (composed) image retrieval on FashionIQ and Fashion200k (reference §3b).

The query is the fusion of the reference image with the text, read as the mean of the visual-position
outputs; the target is the image-only embedding; one-directional InfoNCE of queries against the targets
of the whole global batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.lit.base import FashionLitModule, SplitRecallHooks
from fashion_vl.metrics.composed import ComposedGalleryRecall
from fashion_vl.models.fashionvil import FashionViL


class ComposedRetrievalModule(SplitRecallHooks, FashionLitModule):
    """Train and evaluate composed retrieval.

    Logged: ``train/loss``; on evaluation ``{split}/{group}_r@K`` and ``{split}/mean_r@K`` (FashionIQ,
    with ``group_names``) or ``{split}/r@K`` (Fashion200k), and ``{split}/avg``.

    Args:
        net: a :class:`~fashion_vl.models.fashionvil.FashionViL`.
        loss: ``ContrastiveLoss(symmetric=False)``: queries against gathered targets.
        ks, group_names: see :class:`~fashion_vl.metrics.composed.ComposedGalleryRecall`.
        recall: further ``ComposedGalleryRecall`` arguments (``ranking``, ``per_rank``: ours by default,
            FashionViL's under ``fidelity=reference``).
        optimizer, scheduler, lr_multiplier, fast_modules: see :class:`FashionLitModule`.
    """

    def __init__(
        self,
        net: FashionViL,
        loss: nn.Module,
        optimizer: Any,
        scheduler: Any = None,
        lr_multiplier: float = 20.0,
        fast_modules: Sequence[str] = ("net.image_encoder", "net.visual_embeddings.projection"),
        ks: Sequence[int] = (10, 50),
        group_names: Mapping[int, str] | None = None,
        recall: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.loss = loss
        self.val_recall = ComposedGalleryRecall(ks, group_names, **(recall or {}))
        self.test_recall = ComposedGalleryRecall(ks, group_names, **(recall or {}))

    def compose(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Normalised composed query: mean of the visual outputs of ``fusion([text ; image])``."""
        fused = self.net.encode_fused(input_ids, attention_mask, images)
        return self.net.normalize(fused.visual.mean(dim=1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        query = self.compose(batch["reference_image"], batch["input_ids"], batch["attention_mask"])
        target = self.net.encode_image(batch["target_image"], normalize=True)
        loss = self.loss(query, target)
        bs = int(query.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/contrastive_scale", self.net.contrastive_norm.scale.detach(), batch_size=bs)
        return loss

    def _evaluate(self, batch: dict, metric: ComposedGalleryRecall) -> None:
        if batch["query_image"].numel():
            query = self.compose(batch["query_image"], batch["input_ids"], batch["attention_mask"])
            metric.update_queries(
                query, batch["query_positive"], batch["query_group"], batch["query_exclude"]
            )
        if batch["gallery_image"].numel():
            gallery = self.net.encode_image(batch["gallery_image"], normalize=True)
            metric.update_gallery(
                gallery, batch["gallery_key"], batch["gallery_positive"], batch["gallery_group"]
            )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_recall)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_recall)
