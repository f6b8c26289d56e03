"""UniFashion phase 2 objectives (``shared/reference/unifashion.md`` §3) on a
:class:`~fashion_vl.models.outputs.ComposedEncoding`: ITC composed <-> target, TTC composed <-> target
caption, ITM on (target image, target caption) with hard negatives. Each is called as
``objective(net, encoding, batch, generator)``, the phase-1 interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fashion_vl.losses._dist import gather_no_grad, gather_with_grad, rank
from fashion_vl.losses.itc import MultiQueryContrastiveLoss
from fashion_vl.losses.itm import QueryItmLoss
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
