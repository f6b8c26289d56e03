"""Image-text contrastive loss (InfoNCE) with negatives gathered across ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses._dist import gather_with_grad, rank


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

    def __init__(self, net: nn.Module, loss: ContrastiveLoss | None = None) -> None:
        super().__init__()
        self.loss = loss or ContrastiveLoss()

    def forward(self, net: nn.Module, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image = net.encode_image(batch["image"], normalize=True)
        text = net.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        return {"loss": self.loss(image, text)}
