"""Pseudo-attribute classification with one cosine classifier shared by both modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses.objective import output, zero_loss
from fashion_vl.models.fashionvil import FashionViL
from fashion_vl.models.heads import CosineClassifier


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_c targets * log_softmax(logits)`` (targets are distributions)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


class PacLoss(nn.Module):
    """PAC: soft cross-entropy of the image-only and of the text-only (un-normalised) embeddings against
    the product's attributes, one shared :class:`~fashion_vl.models.heads.CosineClassifier`. Products
    without attributes are left out (they are not encoded at all).

    Args:
        num_classes: pseudo-attribute vocabulary size (2232).
        scale: logit scale of the cosine classifier; 1.0 is the reference (unscaled cosines).
    """

    def __init__(self, net: FashionViL, num_classes: int = 2232, scale: float = 1.0) -> None:
        super().__init__()
        self.head = CosineClassifier.for_encoder(net.text_encoder, num_classes, scale)

    def forward(self, net: FashionViL, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        targets = batch["attribute_targets"]
        keep = targets.sum(dim=1) > 0
        if not keep.any():
            return output(zero_loss(*(p for p in self.head.parameters())))
        x_image = net.encode_image(batch["image"][keep])
        x_text = net.encode_text(batch["input_ids"][keep], batch["attention_mask"][keep])
        targets = targets[keep]
        image_logits, text_logits = self.head(x_image), self.head(x_text)
        loss = soft_cross_entropy(image_logits, targets) + soft_cross_entropy(text_logits, targets)
        hit = targets.gather(1, text_logits.argmax(dim=1, keepdim=True)).squeeze(1) > 0
        return output(loss, text_top1_in_attributes=hit.float().mean())
