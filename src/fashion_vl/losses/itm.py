"""Image-text matching with hard negatives mined over the global batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses._dist import gather_no_grad, gather_padded, rank
from fashion_vl.losses.objective import eval_mode, output
from fashion_vl.models.fashionvil import FashionViL
from fashion_vl.models.heads import ItmHead


def hardest_negatives(
    similarity: torch.Tensor, query_ids: torch.Tensor, gallery_ids: torch.Tensor
) -> torch.Tensor:
    """For each query row, the gallery column with the highest similarity among non-positives.

    Positives are gallery items with the query's product id (the diagonal, and any duplicate of the
    product elsewhere in the global batch). Ties go to the lowest column index.
    """
    positive = query_ids[:, None] == gallery_ids[None, :]
    masked = similarity.masked_fill(positive, float("-inf"))
    return masked.argmax(dim=1)


class ItmLoss(nn.Module):
    """ITM (reference §2): each text is swapped, with probability ``swap_probability``, for the hardest
    negative text of its image (label 0); the others keep their text (label 1). The fused [CLS] goes to
    :class:`~fashion_vl.models.heads.ItmHead`; cross-entropy.

    The hardest negatives are mined from image-only and text-only embeddings computed without gradient
    in eval mode, over the texts of the *whole* global batch (the reference mined per GPU, its FIXME).
    """

    def __init__(self, net: FashionViL, swap_probability: float = 0.5) -> None:
        super().__init__()
        self.head = ItmHead(net.text_encoder)
        self.swap_probability = swap_probability

    def forward(self, net: FashionViL, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        with torch.no_grad(), eval_mode(net):
            image_emb = net.encode_image(images, normalize=True)
            text_emb = net.encode_text(ids, mask, normalize=True)
        swap = torch.rand(ids.shape[0], generator=generator).to(ids.device) < self.swap_probability
        pair_ids, pair_mask = pair_texts(image_emb, text_emb, ids, mask, batch["product_id"], swap)
        fused = net.encode_fused(pair_ids, pair_mask, images)
        logits = self.head(fused.pooled)
        labels = (~swap).long()
        loss = F.cross_entropy(logits, labels)
        return output(loss, acc=(logits.argmax(dim=1) == labels).float().mean())


@torch.no_grad()
def pair_texts(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    product_ids: torch.Tensor,
    swap: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text each image is fused with: its own, or where ``swap`` its hardest negative text among
    every rank's texts. Returns ``input_ids`` and ``attention_mask`` trimmed to the longest chosen text.
    """
    all_text_emb = gather_no_grad(text_emb)
    all_ids = gather_padded(input_ids, pad_value=0)
    all_mask = gather_padded(attention_mask, pad_value=0)
    negative = hardest_negatives(image_emb @ all_text_emb.T, product_ids, gather_no_grad(product_ids))
    own = torch.arange(input_ids.shape[0], device=input_ids.device) + rank() * input_ids.shape[0]
    chosen = torch.where(swap, negative, own)
    length = int(all_mask[chosen].sum(dim=1).max())
    return all_ids[chosen, :length], all_mask[chosen, :length]
