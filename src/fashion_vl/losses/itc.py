"""Image-text contrastive loss (InfoNCE) with negatives gathered across ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.dist import gather_with_grad, rank
from fashion_vl.losses.objective import StepContext, output


class ContrastiveLoss(nn.Module):
    """InfoNCE between paired rows of ``a`` and ``b``; logits are plain dot products.

    The temperature is carried by the embeddings (FashionViL scales both sides by a learnable ``s``,
    so logits are ``s^2 cos``). Negatives come from the whole global batch: each rank scores its own
    rows against every rank's rows, gathered with gradient (see :func:`gather_with_grad`).

    Args:
        symmetric: average the a->b and b->a cross-entropies (ITC); ``False`` keeps a->b only
            (composed retrieval: queries against gathered targets).
        gather: use negatives from all ranks (``True``) or only the local batch.
    """

    def __init__(self, symmetric: bool = True, gather: bool = True) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.gather = gather

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(
                f"contrastive pairs must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        n = a.shape[0]
        a_all, b_all = a, b
        if self.gather:
            b_all = gather_with_grad(b)
            a_all = gather_with_grad(a) if self.symmetric else a
        # this rank's rows sit at [rank * n, (rank + 1) * n) of the gathered batch
        labels = torch.arange(n, device=a.device) + (rank() * n if self.gather else 0)
        loss = F.cross_entropy(a @ b_all.T, labels)
        if self.symmetric:
            loss = 0.5 * (loss + F.cross_entropy(b @ a_all.T, labels))
        return loss


class ItcLoss(nn.Module):
    """ITC as a pre-training objective: image-only vs text-only embeddings, :class:`ContrastiveLoss`."""

    def __init__(self, loss: ContrastiveLoss | None = None) -> None:
        super().__init__()
        self.loss = loss or ContrastiveLoss()

    def forward(self, net: nn.Module, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        image = net.encode_image(batch["image"], normalize=True)
        text = net.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        return output(self.loss(image, text))


def max_over_queries(image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Image-text similarity ``[B_i, B_t]`` of BLIP-2: each image's best query per text.

    Args:
        image_feats: ``[B_i, Q, E]`` one feature per query; text_feats: ``[B_t, E]``.
    """
    return torch.einsum("iqe,te->itq", image_feats, text_feats).amax(dim=-1)


class MultiQueryContrastiveLoss(nn.Module):
    """BLIP-2's ITC: InfoNCE over :func:`max_over_queries` similarities divided by a (learnable)
    temperature, both directions averaged, negatives from every rank (gathered with gradient).

    The reference (UniFashion's phase 1) contrasts per GPU and sums the two directions; LAVIS's BLIP-2
    averages them with label smoothing 0.1. Sum = this mean with weight 2.

    Args:
        label_smoothing: of both cross-entropies (0.0 in UniFashion, 0.1 in BLIP-2).
        gather: use negatives from all ranks (``True``) or only the local batch.
    """

    def __init__(self, label_smoothing: float = 0.0, gather: bool = True) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.gather = gather

    def forward(
        self, image_feats: torch.Tensor, text_feat: torch.Tensor, temperature: torch.Tensor | float
    ) -> torch.Tensor:
        if image_feats.shape[0] != text_feat.shape[0] or image_feats.shape[-1] != text_feat.shape[-1]:
            raise ValueError(
                f"expected [B, Q, E] image and [B, E] text features, got {tuple(image_feats.shape)} "
                f"and {tuple(text_feat.shape)}"
            )
        n = image_feats.shape[0]
        images_all, texts_all = image_feats, text_feat
        if self.gather:
            images_all, texts_all = gather_with_grad(image_feats), gather_with_grad(text_feat)
        labels = torch.arange(n, device=text_feat.device) + (rank() * n if self.gather else 0)
        i2t = max_over_queries(image_feats, texts_all) / temperature
        t2i = max_over_queries(images_all, text_feat).T / temperature
        loss_i2t = F.cross_entropy(i2t, labels, label_smoothing=self.label_smoothing)
        loss_t2i = F.cross_entropy(t2i, labels, label_smoothing=self.label_smoothing)
        return 0.5 * (loss_i2t + loss_t2i)


class QueryItcLoss(nn.Module):
    """ITC as a UniFashion objective: the encoding's query features against its text features, at the
    Q-Former's learnable temperature (clamped to [0.001, 0.5] each step)."""

    def __init__(self, loss: MultiQueryContrastiveLoss | None = None) -> None:
        super().__init__()
        self.loss = loss or MultiQueryContrastiveLoss()

    def forward(self, net: nn.Module, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc = step.encoding
        temperature = net.qformer.temperature()
        return output(self.loss(enc.image_feats, enc.text_feat, temperature), temperature=temperature)
