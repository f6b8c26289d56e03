"""UniFashion phase 2 objectives (``shared/reference/unifashion.md`` §3) on a
:class:`~fashion_vl.models.outputs.ComposedEncoding`: ITC composed <-> target, TTC composed <-> target
caption, ITM on (target image, target caption) or on (reference + target image, modification text) with
hard negatives. Each is called as
``objective(net, encoding, batch, generator)``, the phase-1 interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses._dist import gather_no_grad, gather_with_grad, rank
from fashion_vl.losses.itc import MultiQueryContrastiveLoss, max_over_queries
from fashion_vl.losses.itm import (
    QueryItmLoss,
    gathered_texts,
    mine_negatives,
    negative_mode,
    triplet_itm_loss,
)
from fashion_vl.losses.objective import output, zero_loss
from fashion_vl.models.outputs import ComposedEncoding, ImageTextEncoding

if TYPE_CHECKING:
    from fashion_vl.models.unifashion import UniFashion


class ComposedItcLoss(nn.Module):
    """ITC between composed queries and target images: :class:`MultiQueryContrastiveLoss` over the max
    over the target's prompt-query features, both directions, negatives gathered from every rank, at the
    Q-Former's learnable temperature (``enc.temperature``, shared with TTC)."""

    def __init__(self, loss: MultiQueryContrastiveLoss | None = None) -> None:
        super().__init__()
        self.loss = loss or MultiQueryContrastiveLoss()

    def forward(
        self, net: UniFashion, enc: ComposedEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        loss = self.loss(enc.target_feats, enc.composed_feat, enc.temperature)
        return output(loss, temperature=enc.temperature)


def masked_contrastive(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE between rows of ``a [B, E]`` and ``b [B, E]`` (logits ``a b^T / temperature``,
    columns from every rank) averaged over the rows where ``valid [B]``; rows without a pair still serve
    as negatives. Zero (with graph) when no row of this rank is valid."""
    n = a.shape[0]
    a_all, b_all = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(n, device=a.device) + rank() * n
    a2b = F.cross_entropy(a @ b_all.T / temperature, labels, reduction="none")
    b2a = F.cross_entropy(b @ a_all.T / temperature, labels, reduction="none")
    weight = valid.to(a2b.dtype)
    if not bool(valid.any()):
        return zero_loss(a2b, b2a)
    return 0.5 * ((a2b + b2a) * weight).sum() / weight.sum()


class TtcLoss(nn.Module):
    """TTC: the composed feature against the target caption's text [CLS] feature (symmetric InfoNCE at
    the Q-Former's temperature), so the fusion also matches a description of the wanted item. Pairs whose
    target has no caption are left out of the average (:func:`masked_contrastive`)."""

    def forward(
        self, net: UniFashion, enc: ComposedEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        if enc.caption_feat is None:
            raise KeyError("TTC needs target captions: set data.target_captions=true")
        valid = batch["has_target_caption"].to(enc.composed_feat.device)
        loss = masked_contrastive(enc.composed_feat, enc.caption_feat, valid, enc.temperature)
        covered = gather_no_grad(valid.float()).mean()
        return output(loss, captioned=covered)


class TargetItmLoss(nn.Module):
    """ITM for re-ranking: phase 1's :class:`~fashion_vl.losses.itm.QueryItmLoss` (hard negatives both
    ways, 3B pairs, ``itm_head`` over the phase-1 query outputs) on (target image, target caption) pairs.
    Negatives are mined from the similarities of the targets' prompt-query features and the captions'
    features, positives masked by target image (``target_key``). A target without a caption is paired
    with the empty text (the DataModule logs how many)."""

    def __init__(self, negatives: str = "argmax") -> None:
        super().__init__()
        self.itm = QueryItmLoss(negatives)

    def forward(
        self, net: UniFashion, enc: ComposedEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        if enc.caption_feat is None:
            raise KeyError("ITM on target captions needs them: set data.target_captions=true")
        pairs = ImageTextEncoding(enc.target_tokens, enc.target_states, enc.target_feats, enc.caption_feat)
        caption_batch = {
            "input_ids": batch["target_input_ids"],
            "attention_mask": batch["target_attention_mask"],
            "product_id": batch["target_key"],
        }
        return self.itm(net, pairs, caption_batch, generator)


class ComposedItmLoss(nn.Module):
    """ITM on what re-ranking scores at test time in the reference (``inference_rerank``): the learned
    queries and the modification text, cross-attending to the reference image's tokens followed by a
    candidate target's, ``itm_head`` averaged over the queries. Per query, three pairs (labels 1/0/0):
    (reference + its target, text), (reference + another target, text) and (reference + its target,
    another query's text). The other target is mined from the composed query's ITC similarities to
    every rank's targets (the candidates re-ranking reorders), the other text from the target's
    similarities to every rank's composed queries; both skip entries with the same ``target_key``.

    Why next to :class:`TargetItmLoss`: the reference trains its ITM head on (target image, target
    caption) and then asks it about (reference + candidate, modification text), pairs it never saw. Here
    the head can be trained on the question it is asked (``lit.rerank_with_reference=true`` asks it).
    At CPU demo scale it does not learn them in 300 steps (``docs/tasks.md``).

    Args:
        negatives: ``argmax`` (the hardest), ``sample`` (BLIP-2's draw from the softmax) or ``uniform``.
    """

    def __init__(self, negatives: str = "argmax") -> None:
        super().__init__()
        self.negatives = negative_mode(negatives)

    def forward(
        self, net: UniFashion, enc: ComposedEncoding, batch: dict, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        if enc.reference_tokens is None:
            raise KeyError(
                "composed ITM needs the reference image's tokens (ComposedEncoding.reference_tokens)"
            )
        ids, mask, keys = batch["input_ids"], batch["attention_mask"], batch["target_key"]
        with torch.no_grad():
            all_keys = gather_no_grad(keys)
            sim_q2t = (
                max_over_queries(gather_no_grad(enc.target_feats), enc.composed_feat).T / enc.temperature
            )
            sim_t2q = max_over_queries(enc.target_feats, gather_no_grad(enc.composed_feat)) / enc.temperature
            other_target = mine_negatives(sim_q2t, keys, all_keys, self.negatives, generator)
            other_text = mine_negatives(sim_t2q, keys, all_keys, self.negatives, generator)
        all_targets = gather_with_grad(enc.target_tokens)
        own = torch.cat([enc.reference_tokens, enc.target_tokens], dim=1)
        swapped = torch.cat([enc.reference_tokens, all_targets[other_target]], dim=1)
        pair_tokens = torch.cat([own, swapped, own])
        return triplet_itm_loss(net, pair_tokens, ids, mask, gathered_texts(ids, mask), other_text)
