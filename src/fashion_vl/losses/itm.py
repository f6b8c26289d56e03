"""Image-text matching with hard negatives mined over the global batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.dist import gather_no_grad, gather_padded, gather_with_grad, rank
from fashion_vl.losses.itc import max_over_queries
from fashion_vl.losses.objective import StepContext, eval_mode, output
from fashion_vl.models.fashionvil import FashionViL

if TYPE_CHECKING:
    from fashion_vl.models.outputs import ImageTextEncoding
    from fashion_vl.models.unifashion import UniFashion


def hardest_negatives(
    similarity: torch.Tensor,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    positives: str = "product",
    offset: int = 0,
) -> torch.Tensor:
    """For each query row, the gallery column with the highest similarity among non-positives.

    ``positives="product"`` (ours): positives are gallery items with the query's product id (the
    diagonal, and any duplicate of the product elsewhere in the global batch), never picked.
    ``"diagonal"`` (FashionViL's ``get_hard_pairs``, two bugs of theirs; the ``fidelity=reference``
    preset): only the query's own column (``offset + row``) is masked, and with -1, so a duplicate of
    the product, or the query's own text where every other similarity is below -1, can be picked as a
    "negative". Ties go to the lowest column index.
    """
    if positives == "diagonal":
        rows = torch.arange(similarity.shape[0], device=similarity.device)
        masked = similarity.clone()
        masked[rows, rows + offset] = -1.0
        return masked.argmax(dim=1)
    if positives != "product":
        raise ValueError(f"ITM positives must be 'product' or 'diagonal', not {positives!r}")
    positive = query_ids[:, None] == gallery_ids[None, :]
    masked = similarity.masked_fill(positive, float("-inf"))
    return masked.argmax(dim=1)


class ItmLoss(nn.Module):
    """ITM (reference §2): each text is swapped, with probability ``swap_probability``, for the hardest
    negative text of its image (label 0); the others keep their text (label 1). The fused [CLS] goes to
    the network's :class:`~fashion_vl.models.heads.ItmHead` (``net.heads[head]``); cross-entropy.

    The hardest negatives are mined from image-only and text-only embeddings computed without gradient
    in eval mode, over the texts of the *whole* global batch (the reference mined per GPU, its FIXME).

    Args:
        swap_probability: the share of images paired with a negative text.
        gather_negatives: mine among every rank's texts (ours) or this rank's only (the reference).
        positives: what is never picked as a negative: ``product`` (ours) or ``diagonal`` (the
            reference's bugs, :func:`hardest_negatives`). The ``fidelity=reference`` preset sets
            ``gather_negatives: false, positives: diagonal``.
    """

    def __init__(
        self,
        swap_probability: float = 0.5,
        gather_negatives: bool = True,
        positives: str = "product",
        head: str = "itm",
    ) -> None:
        super().__init__()
        if positives not in ("product", "diagonal"):
            raise ValueError(
                f"lit.objectives.itm.positives must be 'product' or 'diagonal', not {positives!r}"
            )
        self.head = head
        self.swap_probability = swap_probability
        self.gather_negatives = gather_negatives
        self.positives = positives

    def forward(self, net: FashionViL, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        images, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        with torch.no_grad(), eval_mode(net):
            image_emb = net.encode_image(images, normalize=True)
            text_emb = net.encode_text(ids, mask, normalize=True)
        swap = self.draw_swaps(ids.shape[0], step.generator).to(ids.device)
        pair_ids, pair_mask = pair_texts(
            image_emb, text_emb, ids, mask, batch["product_id"], swap, self.gather_negatives, self.positives
        )
        fused = net.encode_fused(pair_ids, pair_mask, images)
        logits = net.heads[self.head](fused.pooled)
        labels = (~swap).long()
        loss = F.cross_entropy(logits, labels)
        return output(loss, acc=(logits.argmax(dim=1) == labels).float().mean())

    def draw_swaps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n]`` bool: which images get their hardest negative text (the step's only random choice)."""
        return torch.rand(n, generator=generator) < self.swap_probability


@torch.no_grad()
def pair_texts(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    product_ids: torch.Tensor,
    swap: torch.Tensor,
    gather: bool = True,
    positives: str = "product",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text each image is fused with: its own, or where ``swap`` its hardest negative text among
    every rank's texts (``gather``) or this rank's. Returns ``input_ids`` and ``attention_mask`` trimmed
    to the longest chosen text.
    """
    if gather:
        all_text_emb, all_products = gather_no_grad(text_emb), gather_no_grad(product_ids)
        all_ids = gather_padded(input_ids, pad_value=0)
        all_mask = gather_padded(attention_mask, pad_value=0)
    else:
        all_text_emb, all_products, all_ids, all_mask = text_emb, product_ids, input_ids, attention_mask
    offset = rank() * input_ids.shape[0] if gather else 0
    negative = hardest_negatives(image_emb @ all_text_emb.T, product_ids, all_products, positives, offset)
    own = torch.arange(input_ids.shape[0], device=input_ids.device) + offset
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
    query_tokens: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The ITM loss over ``3n`` pairs, shared by every Q-Former ITM objective: ``tokens [3n, N, C]`` are
    the cross-attention inputs of (positive, negative image, negative text); the first two read the
    batch's own texts (``ids``/``mask``), the third the rows ``negative_text`` of every rank's texts
    (``all_texts``, :func:`gathered_texts`). Texts trimmed to the longest; CE with labels 1/0/0.
    ``query_tokens``: the query set the pairs are read with (default: the learned queries)."""
    all_ids, all_mask = all_texts
    n, length = ids.shape[0], all_ids.shape[1]
    pair_ids = torch.cat([_pad_columns(ids, length), _pad_columns(ids, length), all_ids[negative_text]])
    pair_mask = torch.cat([_pad_columns(mask, length), _pad_columns(mask, length), all_mask[negative_text]])
    keep = int(pair_mask.sum(dim=1).max())
    logits = net.qformer.itm_logits(tokens, pair_ids[:, :keep], pair_mask[:, :keep], query_tokens)
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
            product id (the diagonal, and the product's other copies in the global batch).
        negative_rows: ``own`` (ours, as LAVIS's BLIP-2): each image's negative text is mined from the
            image's own similarity row, each text's negative image from the text's; ``swapped`` (the
            reference, ``blip2_qformer_cir_cls``: the two directions' rows exchanged, image b's negative
            text from text b's row and the other way round; the ``fidelity=reference`` preset).
    """

    def __init__(self, negatives: str = "argmax", negative_rows: str = "own") -> None:
        super().__init__()
        self.negatives = negative_mode(negatives)
        if negative_rows not in ("own", "swapped"):
            raise ValueError(f"ITM negative_rows must be 'own' or 'swapped', not {negative_rows!r}")
        self.negative_rows = negative_rows

    def forward(self, net: UniFashion, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        enc: ImageTextEncoding = step.encoding
        ids, mask, products = batch["input_ids"], batch["attention_mask"], batch["product_id"]
        with torch.no_grad():
            temperature = net.qformer.temp.detach()
            all_products = gather_no_grad(products)
            sim_i2t = max_over_queries(enc.image_feats, gather_no_grad(enc.text_feat)) / temperature
            sim_t2i = max_over_queries(gather_no_grad(enc.image_feats), enc.text_feat).T / temperature
            if self.negative_rows == "swapped":  # the reference's rows (same shapes: B local x B global)
                sim_i2t, sim_t2i = sim_t2i, sim_i2t
            negative_text = mine_negatives(sim_i2t, products, all_products, self.negatives, step.generator)
            negative_image = mine_negatives(sim_t2i, products, all_products, self.negatives, step.generator)
        all_tokens = gather_with_grad(enc.image_tokens)
        pair_tokens = torch.cat([enc.image_tokens, all_tokens[negative_image], enc.image_tokens])
        return triplet_itm_loss(net, pair_tokens, ids, mask, gathered_texts(ids, mask), negative_text)
