"""Pseudo-attribute classification with one cosine classifier shared by both modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses.objective import StepContext, output, zero_loss
from fashion_vl.models.fashionvil import FashionViL


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_c t * log_softmax(logits)``, ``t`` each target row renormalised to sum 1
    (as the reference's ``SoftLabelCrossEntropyLoss(normalize_targets=True)``), so a row of weights that
    do not sum to 1 is not scaled down. Rows must not be all zero (:class:`PacLoss` drops those)."""
    targets = targets / targets.sum(dim=-1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


class PacLoss(nn.Module):
    """PAC: soft cross-entropy of the image-only and of the text-only (un-normalised) embeddings against
    the product's attributes, one shared :class:`~fashion_vl.models.heads.CosineClassifier`
    (``net.heads[head]``). Products without attributes are left out (they are not encoded at all).
    """

    def __init__(self, head: str = "pac") -> None:
        super().__init__()
        self.head = head

    def forward(self, net: FashionViL, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        targets = batch["attribute_targets"]
        keep = targets.sum(dim=1) > 0
        head = net.heads[self.head]
        if not keep.any():
            return output(zero_loss(*(p for p in head.parameters())))
        x_image = net.encode_image(batch["image"][keep])
        x_text = net.encode_text(batch["input_ids"][keep], batch["attention_mask"][keep])
        targets = targets[keep]
        image_logits, text_logits = head(x_image), head(x_text)
        loss = soft_cross_entropy(image_logits, targets) + soft_cross_entropy(text_logits, targets)
        hit = targets.gather(1, text_logits.argmax(dim=1, keepdim=True)).squeeze(1) > 0
        return output(loss, text_top1_in_attributes=hit.float().mean())
