"""Image-text matching with hard negatives mined over the global batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses._dist import gather_no_grad, gather_padded, gather_with_grad, rank
from fashion_vl.losses.itc import max_over_queries
from fashion_vl.losses.objective import eval_mode, output
from fashion_vl.models.fashionvil import FashionViL
from fashion_vl.models.heads import ItmHead

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion


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


NEGATIVE_MODES = ("argmax", "sample", "uniform")


def mine_negatives(
    similarity: torch.Tensor,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    mode: str = "argmax",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One negative gallery column per query row, among columns of another product.

    ``argmax``: the most similar (:func:`hardest_negatives`). ``sample``: drawn from the softmax of the
    row over the non-positive columns (BLIP-2; ``similarity`` already divided by the temperature).
    ``uniform``: any non-positive column, equally likely (easy negatives: what a head trained from
    random init can learn from while the hardest ones are captions it cannot yet tell apart).
    A row without any non-positive column (a batch of one product) draws uniformly from all columns.
    """
    if negative_mode(mode) == "argmax":
        return hardest_negatives(similarity, query_ids, gallery_ids)
    positive = query_ids[:, None] == gallery_ids[None, :]
    scores = similarity.float() if mode == "sample" else torch.zeros_like(similarity, dtype=torch.float)
    weights = scores.masked_fill(positive, float("-inf")).softmax(dim=1)
    weights = torch.where(positive.all(dim=1, keepdim=True), torch.ones_like(weights), weights)
    drawn = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1)
    return drawn.to(similarity.device)


def negative_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`NEGATIVE_MODES` (the config's ``negatives``), else a ValueError."""
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"ITM negatives must be one of {NEGATIVE_MODES}, not {mode!r}")
    return mode


def _pad_columns(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=0)


@torch.no_grad()
def gathered_texts(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's token ids and attention masks, padded to one length (the negative texts' pool)."""
    return gather_padded(ids, pad_value=0), gather_padded(mask, pad_value=0)


def triplet_itm_loss(
    net: UniFashion,
    tokens: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    all_texts: tuple[torch.Tensor, torch.Tensor],
    negative_text: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The ITM loss over ``3n`` pairs, shared by every Q-Former ITM objective: ``tokens [3n, N, C]`` are
    the cross-attention inputs of (positive, negative image, negative text); the first two read the
    batch's own texts (``ids``/``mask``), the third the rows ``negative_text`` of every rank's texts
    (``all_texts``, :func:`gathered_texts`). Texts trimmed to the longest; CE with labels 1/0/0."""
    all_ids, all_mask = all_texts
    n, length = ids.shape[0], all_ids.shape[1]
    pair_ids = torch.cat([_pad_columns(ids, length), _pad_columns(ids, length), all_ids[negative_text]])
    pair_mask = torch.cat([_pad_columns(mask, length), _pad_columns(mask, length), all_mask[negative_text]])
    keep = int(pair_mask.sum(dim=1).max())
    logits = net.qformer.itm_logits(tokens, pair_ids[:, :keep], pair_mask[:, :keep])
    labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(2 * n, dtype=torch.long)])
    labels = labels.to(ids.device)
    loss = F.cross_entropy(logits, labels)
    return output(loss, acc=(logits.argmax(dim=1) == labels).float().mean())


class QueryItmLoss(nn.Module):
    """BLIP-2's ITM with hard negatives, both directions: for every image a negative text, for every
    text a negative image, mined from the ITC similarities (:func:`max_over_queries`) over the global
    batch; the 3B pairs (positive, negative image, negative text) go through the Q-Former with queries
    and text attending to the image, ``itm_head`` on the query outputs averaged over queries; CE with
    labels 1/0/0. Negative image tokens come from every rank, gathered with gradient (``ln_vision``
    trains), as in LAVIS.

    Args:
        negatives: ``argmax`` (the UniFashion reference: the hardest negative), ``sample`` (BLIP-2:
            drawn from the softmax of the similarities over the temperature) or ``uniform`` (any other
            product, the CPU demos' choice from random init). Positives are masked by
            product id (the diagonal, and the product's other copies in the global batch). The reference
            picks each image's negative text from its *text's* similarity row (the two directions'
            indices are swapped); here each image's negative text comes from the image's own row.
    """

    def __init__(self, negatives: str = "argmax") -> None:
        super().__init__()
        self.negatives = negative_mode(negatives)

    def forward(
        self, net: UniFashion, enc: ImageTextEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        ids, mask, products = batch["input_ids"], batch["attention_mask"], batch["product_id"]
        with torch.no_grad():
            temperature = net.qformer.temp.detach()
            all_products = gather_no_grad(products)
            sim_i2t = max_over_queries(enc.image_feats, gather_no_grad(enc.text_feat)) / temperature
            sim_t2i = max_over_queries(gather_no_grad(enc.image_feats), enc.text_feat).T / temperature
            negative_text = mine_negatives(sim_i2t, products, all_products, self.negatives, generator)
            negative_image = mine_negatives(sim_t2i, products, all_products, self.negatives, generator)
        all_tokens = gather_with_grad(enc.image_tokens)
        pair_tokens = torch.cat([enc.image_tokens, all_tokens[negative_image], enc.image_tokens])
        return triplet_itm_loss(net, pair_tokens, ids, mask, gathered_texts(ids, mask), negative_text)
