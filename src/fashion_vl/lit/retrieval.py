"""Image<->text retrieval tasks: full-gallery evaluation shared by fine-tuning and pre-training, and
cross-modal retrieval trained with ITC (symmetric InfoNCE)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_vl.lit.base import FashionLitModule, SplitRecallHooks
from fashion_vl.metrics.gallery import CrossModalGalleryRecall
from fashion_vl.models.fashionvil import FashionViL


class GalleryRetrievalModule(SplitRecallHooks, FashionLitModule):
    """Validation and test by recall@K of image-only vs text-only embeddings.

    Logs ``{split}/{protocol}/i2t_r@K``, ``.../t2i_r@K``, ``.../rsum`` and ``.../mean`` (percentages)
    for each protocol in ``protocols`` (``full``: the whole gallery; ``sample100``: KaleidoBERT's 1 + 100
    candidates). Subclasses add the training objective. ``recall``: further
    :class:`~fashion_vl.metrics.gallery.CrossModalGalleryRecall` arguments (``ranking``,
    ``sample100_fill``, ``per_rank``: ours by default, FashionViL's under ``fidelity=reference``).
    """

    def __init__(
        self,
        net: FashionViL,
        optimizer: Any,
        scheduler: Any,
        lr_multiplier: float,
        fast_modules: Sequence[str],
        ks: Sequence[int],
        protocols: Sequence[str] = ("full",),
        recall: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules)
        self.val_recall = CrossModalGalleryRecall(ks, protocols, **(recall or {}))
        self.test_recall = CrossModalGalleryRecall(ks, protocols, **(recall or {}))

    def _embed_gallery(self, batch: dict, metric: CrossModalGalleryRecall) -> None:
        text = self.net.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        if batch["image"].numel():
            image = self.net.encode_image(batch["image"], normalize=True)
        else:  # every image of these products failed to load
            image = text.new_zeros((0, text.shape[1]))
        metric.update(
            image, batch["image_product_id"], batch["image_key"], text, batch["product_id"],
            image_groups=batch["image_subcategory_id"], text_groups=batch["subcategory_id"],
        )  # fmt: skip

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._embed_gallery(batch, self.val_recall)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._embed_gallery(batch, self.test_recall)


class CrossModalRetrievalModule(GalleryRetrievalModule):
    """Train and evaluate FashionViL's unimodal embeddings for image<->text retrieval.

    Logged in training: ``train/itc_loss``, ``train/contrastive_scale``.

    Args:
        net: a :class:`~fashion_vl.models.fashionvil.FashionViL`.
        loss: the contrastive loss (``losses.ContrastiveLoss``).
        ks: the K of recall@K.
        protocols: evaluation protocols (both by default: ``full`` and ``sample100``).
        recall: see :class:`GalleryRetrievalModule`.
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
        ks: Sequence[int] = (1, 5, 10),
        protocols: Sequence[str] = ("full", "sample100"),
        recall: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, lr_multiplier, fast_modules, ks, protocols, recall)
        # the full resolved config is in every checkpoint (ConfigInCheckpoint); keep hparams to plain values
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.loss = loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image = self.net.encode_image(batch["image"], normalize=True)
        text = self.net.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        loss = self.loss(image, text)
        bs = self.batch_size_of(batch)
        self.log("train/itc_loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/contrastive_scale", self.net.contrastive_norm.scale.detach(), batch_size=bs)
        return loss
